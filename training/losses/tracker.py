"""The tracker's training loss: one clip seeded on its first slice and propagated through the others.

Loss per propagated slice and object, SAM2's recipe: focal (α 0.25, γ 2; weight 20) + Dice (1) on the mask logits
upsampled to the ground truth's grid, for the best of the decoder's multimask outputs (lowest focal + Dice), only
where the object is on the slice; L1 between the predicted and the actual IoU of every output (1); BCE of the
object-score logit against "the object is on this slice" (1). The weights are the ``tracker_*`` fields of
:class:`~training.losses.criterion.LossConfig`, beside the detector's. Mask and IoU terms are averaged over present
(object, slice) pairs, the object score over all pairs. The decoder's raw outputs are read with a forward hook:
:meth:`MemoryTracker.propagate` returns only the output chosen by predicted IoU, with −1024 logits where it judged
the object absent.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np
import torch
import torch.nn.functional as F

from medsam3_core.engine.tracker import MemoryTracker
from medsam3_core.model.bundle import Sam3Bundle
from training.losses.criterion import LossConfig
from training.losses.terms import sigmoid_focal_loss, soft_dice

if TYPE_CHECKING:  # the clip type only; training.tracker builds on the losses, not the other way round
    from training.tracker.clips import Clip

__all__ = ["clip_loss"]


class _DecoderTap:
    """Keeps the raw outputs of the tracker's SAM mask decoder's last call (all multimask outputs, IoU predictions)."""

    def __init__(self, decoder: torch.nn.Module) -> None:
        self.last = None
        self._handle = decoder.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.last = output

    def close(self) -> None:
        self._handle.remove()


def _slice_terms(raw_masks: torch.Tensor, iou_pred: torch.Tensor, gt: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss terms on one slice from decoder masks ``(n, K, h, w)``, IoU predictions ``(n, K)`` and ground truth
    ``(n, S, S)``: ``focal``, ``dice`` per object and output ``(n, K)``; ``iou`` per object ``(n,)`` (mean L1 over
    the outputs)."""
    logits = F.interpolate(raw_masks.float(), size=gt.shape[-2:], mode="bilinear", align_corners=False)
    target = gt.float()[:, None].expand_as(logits)
    focal = sigmoid_focal_loss(logits, target, alpha=0.25, gamma=2.0).flatten(2).mean(-1)  # (n, K)
    dice = 1 - soft_dice(logits.sigmoid().flatten(-2), target.flatten(-2))
    with torch.no_grad():
        pred = logits > 0
        inter = (pred & target.bool()).flatten(2).sum(-1).float()
        union = (pred | target.bool()).flatten(2).sum(-1).float()
        actual_iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    iou = (iou_pred.float() - actual_iou).abs().mean(-1)
    return {"focal": focal, "dice": dice, "iou": iou}


def clip_loss(
    tracker: MemoryTracker,
    bundle: Sam3Bundle,
    clip: Clip,
    rng: Optional[np.random.Generator] = None,
    gt_memory: float = 0.0,
    weights: Optional[LossConfig] = None,
    memory_size: Optional[int] = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Seed on the clip's first slice, propagate through the others, return the loss (module docstring) and its
    terms. ``tracker`` may be ``None``: one is built for the clip's volume length."""
    weights = weights or LossConfig()
    if tracker is None:
        tracker = MemoryTracker(bundle, memory_size or int(bundle.tracker.num_maskmem), clip.num_slices)
    pixels = clip.pixels.to(bundle.device)
    with torch.no_grad():
        vision = bundle.detector.get_vision_features(pixel_values=pixels)
    feats = tracker.features(vision)
    gt = clip.masks.to(bundle.device)  # (N, T, S, S)
    present = clip.present.to(bundle.device)
    grid = tracker.mask_grid
    gt_small = F.interpolate(gt.float().flatten(0, 1)[:, None], size=grid, mode="area")[:, 0]
    gt_small = gt_small.reshape(gt.shape[0], gt.shape[1], *grid) > 0.5
    memories = tracker.seed(feats[0], gt[:, 0], 0)
    tap = _DecoderTap(bundle.tracker.mask_decoder)
    mask_terms, score_terms, iou_terms = [], [], []
    stats = {"focal": 0.0, "dice": 0.0, "iou": 0.0, "score": 0.0}
    try:
        for t in range(1, gt.shape[1]):
            tap.last = None
            step = tracker.propagate(feats[t], memories, t)
            raw_masks, iou_pred, _, score_raw = tap.last
            terms = _slice_terms(raw_masks[:, 0], iou_pred[:, 0], gt[:, t])
            combined = weights.tracker_focal_weight * terms["focal"] + weights.tracker_dice_weight * terms["dice"]
            best = combined.argmin(dim=1)
            rows = torch.arange(len(best), device=best.device)
            here = present[:, t]
            mask_terms.append(combined[rows, best][here])
            iou_terms.append(terms["iou"][here])
            score_terms.append(F.binary_cross_entropy_with_logits(
                step.score_logits.float(), here.float(), reduction="none"))
            stats["focal"] += float(terms["focal"][rows, best][here].detach().sum())
            stats["dice"] += float(terms["dice"][rows, best][here].detach().sum())
            if rng is not None and gt_memory > 0 and rng.random() < gt_memory:
                logits = torch.where(gt_small[:, t], 10.0, -10.0).to(step.mask_logits.dtype)
                seen = here
            else:
                logits, seen = step.mask_logits, step.score_logits > 0
            tracker.remember(feats[t], memories, t, logits, seen, step.pointers)
    finally:
        tap.close()
    masks = torch.cat(mask_terms)
    ious = torch.cat(iou_terms)
    scores = torch.cat(score_terms)
    n_present = max(int(masks.numel()), 1)
    loss = (masks.sum() / n_present + weights.tracker_iou_weight * ious.sum() / n_present
            + weights.tracker_score_weight * scores.mean())
    stats = {
        "loss": float(loss.detach()),
        "focal": stats["focal"] / n_present,
        "dice": stats["dice"] / n_present,
        "iou": float(ious.detach().sum()) / n_present,
        "score": float(scores.detach().mean()),
    }
    return loss, stats
