"""Box arithmetic for the set-prediction losses: normalised ``xyxy`` boxes (SAM3's ``pred_boxes`` convention).

Written from the definitions (IoU; generalised IoU of Rezatofighi et al., 2019), pairwise so matchers can build
``(Q, N)`` cost matrices and losses can take the diagonal of matched pairs.
"""

from __future__ import annotations

import torch

__all__ = ["xyxy_to_cxcywh", "box_area", "pairwise_iou", "pairwise_giou", "masks_to_boxes"]


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """``(..., 4)`` corners → centre/size; L1 box terms use centre/size so width and position weigh equally."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def _pairwise_inter_union(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter, union


def pairwise_iou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """IoU of every box in ``a (M,4)`` with every box in ``b (N,4)`` → ``(M, N)``."""
    inter, union = _pairwise_inter_union(a, b)
    return inter / union.clamp(min=eps)


def pairwise_giou(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Generalised IoU ``IoU − (|C| − |A∪B|)/|C|`` with ``C`` the smallest enclosing box → ``(M, N)`` in [−1, 1].

    Unlike IoU it still has a gradient when boxes do not overlap, which is why DETR-style training uses it.
    """
    inter, union = _pairwise_inter_union(a, b)
    iou = inter / union.clamp(min=eps)
    lt = torch.min(a[:, None, :2], b[None, :, :2])
    rb = torch.max(a[:, None, 2:], b[None, :, 2:])
    enclosing = (rb - lt).clamp(min=0).prod(-1)
    return iou - (enclosing - union) / enclosing.clamp(min=eps)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight normalised ``xyxy`` boxes of binary masks ``(N, H, W)``; pixel edges, so a full mask gives [0,0,1,1]."""
    n, h, w = masks.shape
    if n == 0:
        return masks.new_zeros((0, 4), dtype=torch.float32)
    rows = masks.any(dim=2)
    cols = masks.any(dim=1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ar_h, h).min(dim=1).values
    y1 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
    x0 = torch.where(cols, ar_w, w).min(dim=1).values
    x1 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
    return torch.stack([x0 / w, y0 / h, x1 / w, y1 / h], dim=-1).float()
