"""The paper's total loss ``L_total = L_find(π) + λ_o2m·L_find(π_o2m) + L_seg`` (Table 2 weights).

* ``L_find`` = λ_ce·focal classification of every query (matched → 1, others → 0; positives weighted ×10)
  + λ_pr·presence BCE + λ_l1·L1 + λ_g·(1 − GIoU) on matched boxes. It is computed for **every decoder layer**
  (deep supervision; each layer matched on its own), once with the one-to-one matching π and once with the
  one-to-many matching π_o2m. SAM3 scores π_o2m on a separate set of training-only queries, which transformers'
  ``Sam3Model`` does not have, so here both matchings supervise the same queries; the one-to-one pairs are
  therefore always added to π_o2m, so the two terms never pull a query in opposite directions. Presence does not
  depend on the matching, so it enters the o2o term only; adding it again in the o2m term would triple its weight.
* ``L_seg`` = λ_f·mask focal (α 0.6) + λ_d·dice on the last layer's matched masks, + λ_sp·a segmentation-level
  presence term: BCE of the semantic head against the union of the prompt's instances (so an absent concept must
  give an empty semantic map). Ground-truth masks are area-downsampled to the mask head's resolution (¼ of the
  ViT grid ×4), which is what the head predicts; upsampling 200 predictions to 1008² would cost far more.

Every term is divided by the number of ground-truth instances in the *global* batch (all-reduced under DDP and
scaled by the world size because DDP averages gradients), clamped to ≥ 1 so an all-negative batch still trains
"nothing here".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from training.engine import distributed
from training.losses.terms import box_l1_loss, dice_loss, giou_loss, mask_focal_loss, presence_loss, sigmoid_focal_loss
from training.losses.matcher import HungarianMatcher, Match, OneToManyMatcher
from training.engine.outputs import DetectorOutputs

__all__ = ["LossConfig", "Target", "SetCriterion"]


@dataclass
class LossConfig:
    """Loss and matcher hyper-parameters, the one place loss weights live; detector defaults are the paper's
    (Table 2), tracker defaults SAM2's."""

    match_cls: float = 2.0
    match_box: float = 5.0
    match_giou: float = 2.0
    match_alpha: float = 0.25
    match_gamma: float = 2.0
    match_mask: float = 0.0
    o2m_topk: int = 4
    o2m_threshold: float = 0.4
    o2m_alpha: float = 0.3
    o2m_weight: float = 2.0
    cls_weight: float = 20.0
    cls_alpha: float = 0.25
    cls_gamma: float = 2.0
    cls_pos_weight: float = 10.0
    presence_weight: float = 20.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    mask_focal_weight: float = 20.0
    mask_focal_alpha: float = 0.6
    mask_focal_gamma: float = 2.0
    dice_weight: float = 30.0
    seg_presence_weight: float = 1.0
    aux_layers: bool = True
    # Tracker training (training.losses.tracker), SAM2's weights: mask focal, mask Dice, IoU prediction, object score.
    tracker_focal_weight: float = 20.0
    tracker_dice_weight: float = 1.0
    tracker_iou_weight: float = 1.0
    tracker_score_weight: float = 1.0


@dataclass
class Target:
    """Ground truth of one prompt: ``masks (N, H, W)`` (0/1) and their normalised ``xyxy`` ``boxes (N, 4)``.

    ``N = 0`` is a negative prompt (the concept is absent).
    """

    masks: torch.Tensor
    boxes: torch.Tensor

    @property
    def num_instances(self) -> int:
        return int(self.boxes.shape[0])

    def to(self, device: torch.device) -> "Target":
        return Target(self.masks.to(device, non_blocking=True), self.boxes.to(device, non_blocking=True))


@dataclass
class _Layer:
    logits: torch.Tensor
    boxes: torch.Tensor
    presence: torch.Tensor


class SetCriterion(torch.nn.Module):
    """Matches, weighs and normalises; returns ``(total, {term: value})`` with detached per-term values for logs."""

    def __init__(self, cfg: Optional[LossConfig] = None) -> None:
        super().__init__()
        self.cfg = cfg or LossConfig()
        c = self.cfg
        self.o2o = HungarianMatcher(c.match_cls, c.match_box, c.match_giou, c.match_alpha, c.match_gamma, c.match_mask)
        self.o2m = OneToManyMatcher(c.o2m_topk, c.o2m_threshold, c.o2m_alpha)

    def normaliser(self, targets: list[Target], device: torch.device) -> torch.Tensor:
        """Instances per rank, averaged over ranks (≥ 1): the DETR convention under gradient averaging."""
        n = torch.tensor(float(sum(t.num_instances for t in targets)), device=device)
        n = distributed.all_reduce_sum(n) / distributed.world_size()
        return n.clamp(min=1.0)

    def _find(self, layer: _Layer, targets: list[Target], matches: list[Match], with_presence: bool) -> dict:
        c = self.cfg
        cls_target = torch.zeros_like(layer.logits)
        for b, m in enumerate(matches):
            cls_target[b, m.pred] = 1.0
        terms = {
            "cls": c.cls_weight
            * sigmoid_focal_loss(layer.logits, cls_target, c.cls_alpha, c.cls_gamma, c.cls_pos_weight).sum()
        }
        if with_presence:
            present = torch.tensor([float(t.num_instances > 0) for t in targets], device=layer.presence.device)
            terms["presence"] = c.presence_weight * presence_loss(layer.presence, present)
        pred = torch.cat([layer.boxes[b, m.pred] for b, m in enumerate(matches)])
        gt = torch.cat([t.boxes[m.gt] for t, m in zip(targets, matches)]).to(pred)
        terms["l1"] = c.l1_weight * box_l1_loss(pred, gt)
        terms["giou"] = c.giou_weight * giou_loss(pred, gt)
        return terms

    def _seg(self, out: DetectorOutputs, targets: list[Target], matches: list[Match], smalls: list) -> dict:
        c = self.cfg
        size = out.masks.shape[-2:]
        pred, gt, union = [], [], []
        for b, (t, m, small) in enumerate(zip(targets, matches, smalls)):
            pred.append(out.masks[b, m.pred])
            gt.append(small[m.gt])
            union.append(small.amax(0) if t.num_instances else out.masks.new_zeros(size))
        pred_m, gt_m = torch.cat(pred), torch.cat(gt)
        terms = {
            "mask_focal": c.mask_focal_weight * mask_focal_loss(pred_m, gt_m, c.mask_focal_alpha, c.mask_focal_gamma),
            "dice": c.dice_weight * dice_loss(pred_m, gt_m),
        }
        if out.semantic is not None and c.seg_presence_weight > 0:
            sem = F.binary_cross_entropy_with_logits(
                out.semantic[:, 0].float(), torch.stack(union).float(), reduction="none"
            )
            terms["seg_presence"] = c.seg_presence_weight * sem.flatten(1).mean(1).sum()
        return terms

    def forward(self, out: DetectorOutputs, targets: list[Target]) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.cfg
        if len(targets) != out.logits.shape[1]:
            raise ValueError(f"{len(targets)} targets for a batch of {out.logits.shape[1]} prompts")
        norm = self.normaliser(targets, out.logits.device)
        layers = range(out.num_layers) if c.aux_layers else [out.num_layers - 1]
        terms: dict[str, torch.Tensor] = {}

        def add(prefix: str, values: dict) -> None:
            for k, v in values.items():
                terms[prefix + k] = terms.get(prefix + k, 0.0) + v

        smalls = [_downsample(t.masks, out.masks.shape[-2:], out.masks.dtype) for t in targets]
        last_matches: list[Match] = []
        for li in layers:
            layer = _Layer(out.logits[li], out.boxes[li], out.presence[li])
            last = li == out.num_layers - 1  # only the last layer has masks for a mask matching cost
            o2o = [
                self.o2o(layer.logits[b], layer.boxes[b], t.boxes.to(layer.boxes),
                         out.masks[b] if last else None, smalls[b] if last else None)
                for b, t in enumerate(targets)
            ]
            add("", self._find(layer, targets, o2o, with_presence=True))
            if c.o2m_weight > 0:
                o2m = [
                    _with_o2o(self.o2m(layer.logits[b], layer.boxes[b], t.boxes.to(layer.boxes)), o2o[b])
                    for b, t in enumerate(targets)
                ]
                add("o2m_", {k: c.o2m_weight * v for k, v in self._find(layer, targets, o2m, False).items()})
            last_matches = o2o
        add("", self._seg(out, targets, last_matches, smalls))
        total = sum(v / norm for v in terms.values())
        logs = {k: float(v.detach() / norm) for k, v in terms.items()}
        logs["num_instances"] = float(norm)
        return total, logs


def _with_o2o(o2m: Match, o2o: Match) -> Match:
    """``o2m`` plus the one-to-one pairs whose query it does not already use."""
    extra = ~torch.isin(o2o.pred, o2m.pred)
    return Match(torch.cat([o2m.pred, o2o.pred[extra]]), torch.cat([o2m.gt, o2o.gt[extra]]))


def _downsample(masks: torch.Tensor, size: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """Area-average binary masks ``(N, H, W)`` to the mask head's ``size``; soft edges keep sub-pixel information."""
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size), dtype=dtype)
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks.to(dtype)
    return F.interpolate(masks[None].float(), size=tuple(size), mode="area")[0].to(dtype)
