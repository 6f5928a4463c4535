"""Loss terms of SAM3's set prediction, as plain functions of tensors (no matching, no weighting).

Each function returns a *sum* over its items; :mod:`training.losses.criterion` applies the paper's weights and divides
by the batch's matched-instance count, so that a batch with many instances does not simply weigh more.

* :func:`sigmoid_focal_loss` — Lin et al. (2017): ``−α_t (1 − p_t)^γ log p_t`` element-wise, with an optional extra
  weight on positive targets (the paper's "positive weight 10" for query classification: among 200 queries only a
  handful are positive).
* :func:`presence_loss` — binary cross-entropy of the per-prompt presence logit ("is the concept in the image?").
* :func:`box_l1_loss` / :func:`giou_loss` — on matched pairs only (``1[j≠∅]`` in the paper).
* :func:`mask_focal_loss` / :func:`dice_loss` — per matched mask, averaged over pixels / as 1 − Dice.
* :func:`soft_dice` — the one soft Dice coefficient of the training stack (the losses above, the matcher's mask
  cost and the tracker loss all use it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.losses.boxes import pairwise_giou, xyxy_to_cxcywh

__all__ = [
    "sigmoid_focal_loss", "presence_loss", "box_l1_loss", "giou_loss", "mask_focal_loss", "dice_loss", "soft_dice",
]


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0, pos_weight: float = 1.0
) -> torch.Tensor:
    """Element-wise focal loss (same shape as ``logits``); ``alpha < 0`` disables the α balance."""
    logits = logits.float()
    targets = targets.float()
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    if pos_weight != 1.0:
        loss = loss * (1 + (pos_weight - 1) * targets)
    return loss


def presence_loss(logits: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Summed BCE of presence logits ``(B,)`` against 0/1 targets ``(B,)``."""
    return F.binary_cross_entropy_with_logits(logits.float(), present.float(), reduction="sum")


def box_l1_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Summed L1 distance of matched ``xyxy`` boxes ``(M, 4)``, measured in centre/size coordinates."""
    return (xyxy_to_cxcywh(pred.float()) - xyxy_to_cxcywh(gt.float())).abs().sum()


def giou_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Summed ``1 − GIoU`` of matched ``xyxy`` boxes ``(M, 4)``."""
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    return (1 - torch.diagonal(pairwise_giou(pred.float(), gt.float()))).sum()


def mask_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.6, gamma: float = 2.0
) -> torch.Tensor:
    """Focal loss of matched masks ``(M, h, w)`` averaged over pixels, summed over masks (targets may be soft)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return sigmoid_focal_loss(logits, targets, alpha, gamma).flatten(1).mean(1).sum()


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Summed ``1 − (2|P∩T| + s)/(|P| + |T| + s)`` of matched masks ``(M, h, w)`` with soft ``P = σ(logits)``."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    return (1 - soft_dice(logits.float().sigmoid().flatten(1), targets.float().flatten(1), smooth)).sum()


def soft_dice(probs: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0, pairwise: bool = False) -> torch.Tensor:
    """Soft Dice ``(2|P∩T| + s)/(|P| + |T| + s)`` of probability maps and (possibly soft) targets, flattened over
    the last axis.

    ``probs (..., N)`` and ``targets (..., N)`` pair up item by item and give ``(...)``; with ``pairwise``,
    ``probs (M, N)`` and ``targets (G, N)`` give every pair ``(M, G)`` through one matrix product (the matcher's
    cost, where broadcasting would hold an ``M × G × N`` tensor). The smoothing ``s`` makes two empty masks agree.
    """
    if pairwise:
        inter = probs @ targets.T
        return (2 * inter + smooth) / (probs.sum(-1)[:, None] + targets.sum(-1)[None, :] + smooth)
    return (2 * (probs * targets).sum(-1) + smooth) / (probs.sum(-1) + targets.sum(-1) + smooth)
