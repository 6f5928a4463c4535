"""Assigning predicted queries to ground-truth instances, one prompt (image × concept) at a time.

Two matchers, both written from their definitions:

* :class:`HungarianMatcher` — the one-to-one assignment π of DETR: minimise
  ``w_cls·C_focal + w_box·‖b̂ − b‖₁ + w_giou·(−GIoU(b̂, b))`` with ``scipy.optimize.linear_sum_assignment``.
  The class cost is the focal-loss difference between calling a query positive and calling it negative, so a
  confident query is cheap to match and an unconfident one is expensive (paper Table 2: w 2/5/2, α 0.25, γ 2).
* :class:`OneToManyMatcher` — the auxiliary assignment π_o2m: each ground truth takes its ``k`` best queries by
  match quality ``q = p^α · IoU^(1−α)`` (``p`` the query's probability) that exceed a quality threshold; a query
  claimed by several ground truths goes to the one it fits best (paper: k 4, threshold 0.4, α 0.3).

SAM3 prompts are binary (one concept per prompt), so there is no class dimension: ``logits`` is ``(Q,)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from training.losses.boxes import pairwise_giou, pairwise_iou, xyxy_to_cxcywh
from training.losses.terms import soft_dice

__all__ = ["Match", "HungarianMatcher", "OneToManyMatcher", "focal_class_cost"]


@dataclass
class Match:
    """Matched pairs for one prompt: ``pred[i]`` (query index) ↔ ``gt[i]`` (ground-truth index), both long."""

    pred: torch.Tensor
    gt: torch.Tensor

    @staticmethod
    def empty(device: torch.device | str = "cpu") -> "Match":
        e = torch.zeros(0, dtype=torch.long, device=device)
        return Match(e, e.clone())

    def __len__(self) -> int:
        return int(self.pred.numel())


def focal_class_cost(logits: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Per-query focal cost of labelling it positive minus the cost of labelling it negative."""
    p = logits.sigmoid()
    pos = alpha * (1 - p).pow(gamma) * -(p + 1e-8).log()
    neg = (1 - alpha) * p.pow(gamma) * -(1 - p + 1e-8).log()
    return pos - neg


class HungarianMatcher:
    """One-to-one matching π (each ground truth gets exactly one query when there are enough queries)."""

    def __init__(
        self,
        w_cls: float = 2.0,
        w_box: float = 5.0,
        w_giou: float = 2.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
        w_mask: float = 0.0,
    ) -> None:
        self.w_cls, self.w_box, self.w_giou, self.alpha, self.gamma = w_cls, w_box, w_giou, alpha, gamma
        self.w_mask = w_mask

    def cost(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        gt_boxes: torch.Tensor,
        masks: Optional[torch.Tensor] = None,
        gt_masks: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """``(Q, N)`` matching cost for ``logits (Q,)``, predicted ``boxes (Q, 4)`` and ``gt_boxes (N, 4)`` (xyxy).

        With ``w_mask > 0`` and mask logits ``(Q, h, w)`` / targets ``(N, h, w)`` given, ``w_mask·(1 − Dice)`` is
        added (not in the paper's matcher; it steadies the assignment of a network trained from scratch, whose
        early boxes are noise).
        """
        c_cls = focal_class_cost(logits.float(), self.alpha, self.gamma)[:, None]
        c_l1 = torch.cdist(xyxy_to_cxcywh(boxes.float()), xyxy_to_cxcywh(gt_boxes.float()), p=1)
        c_giou = -pairwise_giou(boxes.float(), gt_boxes.float())
        cost = self.w_cls * c_cls + self.w_box * c_l1 + self.w_giou * c_giou
        if self.w_mask > 0 and masks is not None and gt_masks is not None:
            p = masks.float().flatten(1).sigmoid()
            t = gt_masks.float().flatten(1)
            cost = cost + self.w_mask * (1 - soft_dice(p, t, pairwise=True))
        return cost

    @torch.no_grad()
    def __call__(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        gt_boxes: torch.Tensor,
        masks: Optional[torch.Tensor] = None,
        gt_masks: Optional[torch.Tensor] = None,
    ) -> Match:
        if gt_boxes.shape[0] == 0 or logits.shape[0] == 0:
            return Match.empty(logits.device)
        cost = self.cost(logits, boxes, gt_boxes, masks, gt_masks).cpu().numpy()
        rows, cols = linear_sum_assignment(np.nan_to_num(cost, nan=1e6, posinf=1e6, neginf=-1e6))
        dev = logits.device
        return Match(
            torch.as_tensor(rows, dtype=torch.long, device=dev), torch.as_tensor(cols, dtype=torch.long, device=dev)
        )


class OneToManyMatcher:
    """One-to-many matching π_o2m: up to ``topk`` queries per ground truth whose quality exceeds ``threshold``."""

    def __init__(self, topk: int = 4, threshold: float = 0.4, alpha: float = 0.3) -> None:
        self.topk, self.threshold, self.alpha = topk, threshold, alpha

    def quality(self, logits: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
        """``(Q, N)`` match quality ``p^α · IoU^(1−α)``: high only when a query is both confident and well placed."""
        p = logits.float().sigmoid()[:, None]
        iou = pairwise_iou(boxes.float(), gt_boxes.float())
        return p.pow(self.alpha) * iou.pow(1 - self.alpha)

    @torch.no_grad()
    def __call__(self, logits: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor) -> Match:
        if gt_boxes.shape[0] == 0 or logits.shape[0] == 0:
            return Match.empty(logits.device)
        q = self.quality(logits, boxes, gt_boxes)
        k = min(self.topk, q.shape[0])
        top_q, top_idx = q.topk(k, dim=0)  # (k, N)
        claimed = torch.zeros_like(q, dtype=torch.bool)
        claimed.scatter_(0, top_idx, top_q > self.threshold)
        # A query claimed by several ground truths keeps only the one it fits best.
        best_gt = torch.where(claimed, q, torch.full_like(q, -1.0)).argmax(dim=1)
        pred = torch.nonzero(claimed.any(dim=1)).flatten()
        return Match(pred, best_gt[pred])
