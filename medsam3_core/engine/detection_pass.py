"""Pass 1 of the engine: every slice through the detector, batch by batch (module docstring of
:mod:`~medsam3_core.engine.volume_engine`).

``detect`` mode paints every detection at or above the threshold and is done. ``track`` mode keeps each prompt's
best ``max_objects`` detections per slice compactly (8-bit probabilities on the low-res grid, on the engine's
device), remembers each prompt's most confident slice (its seed) and stores the slice's tracker features for the
sweeps. Detections stay on the device: the host sees only their scores.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Optional

import torch

from medsam3_core.engine.batching import for_each_batch
from medsam3_core.engine.detector import Detections
from medsam3_core.engine.postprocess import MASK_THRESHOLD
from medsam3_core.engine.run_context import RunContext

__all__ = ["StoredDetections", "detect_and_store", "detect_only"]


@dataclass
class StoredDetections:
    """Detections of one prompt on one slice kept for the sweeps: 8-bit probabilities ``(n, h, w)`` on the device,
    scores ``(n,)`` on the host."""

    probs: torch.Tensor
    scores: torch.Tensor

    def float_probs(self) -> torch.Tensor:
        return self.probs.float() / 255.0


def _heads(ctx: RunContext, vision, top_k: Optional[int] = None) -> Detections:
    """Detector heads; masks only where a detection reaches the run's threshold (the others are discarded)."""
    with ctx.timer.stage("heads"):
        return ctx.detector.detect(vision, ctx.text, top_k=top_k, min_score=ctx.threshold, on_host=False)


def detect_only(ctx: RunContext) -> dict[int, dict[int, float]]:
    """Paint every detection ≥ threshold; returns ``{prompt: {slice: best score}}``."""
    scores: dict[int, dict[int, float]] = {p: {} for p in range(len(ctx.text))}

    def process(batch: list[int]) -> None:
        ctx.cancel.raise_if_cancelled()  # the batch is the cancellation unit
        detections = _heads(ctx, ctx.encoded.vision(batch, ctx.timer))
        with ctx.timer.stage("fuse"):
            all_scores = detections.scores.float().cpu()
            for b, index in enumerate(batch):
                probs, values, ids = [], [], []
                for p in range(len(ctx.text)):  # as postprocess.instances_for: best first, empty masks dropped
                    keep = torch.nonzero(all_scores[b, p] >= ctx.threshold).flatten()
                    keep = keep[torch.argsort(all_scores[b, p, keep], descending=True, stable=True)]
                    if keep.numel():
                        logits = detections.mask_logits[b, p].index_select(0, keep.to(detections.mask_logits.device))
                        probs.append(logits.float().sigmoid())
                        values += all_scores[b, p, keep].tolist()
                        ids += [p + 1] * keep.numel()
                if not probs:
                    continue
                originals = ctx.letterbox.to_original(torch.cat(probs), mode="bilinear")
                nonempty = (originals > MASK_THRESHOLD).flatten(1).any(dim=1).cpu().tolist()
                for value, label, present in zip(values, ids, nonempty):
                    if present:
                        scores[label - 1][index] = max(scores[label - 1].get(index, 0.0), value)
                ctx.canvas.paint(index, originals, values, ids)

    for_each_batch(ctx, "detect", process)
    return scores


def detect_and_store(ctx: RunContext, tracker) -> tuple[dict[int, dict[int, StoredDetections]], dict[int, int]]:
    """Detection pass of track mode: compact detections ``{slice: {prompt: StoredDetections}}`` and each prompt's
    seed slice ``{prompt: slice}``; tracker features go to the volume's store."""
    stored: dict[int, dict[int, StoredDetections]] = defaultdict(dict)
    best: dict[int, tuple[float, int]] = {}  # prompt -> (score, slice)
    k = ctx.max_objects

    def process(batch: list[int]) -> None:
        ctx.cancel.raise_if_cancelled()  # the batch is the cancellation unit
        vision = ctx.encoded.vision(batch, ctx.timer)
        ctx.encoded.keep_tracker_features(batch, vision, tracker, ctx.timer)  # the sweeps never run the ViT again
        detections = _heads(ctx, vision, top_k=k)  # only the kept detections' masks are computed
        with ctx.timer.stage("fuse"):
            host_scores = detections.scores.float().cpu()
            for b, index in enumerate(batch):
                for p in range(len(ctx.text)):
                    kept = _keep(ctx, detections, host_scores, b, p, k)
                    if kept is None:
                        stored[index].pop(p, None)
                        continue
                    stored[index][p] = kept
                    top = float(kept.scores[0])
                    if top > best.get(p, (-1.0, -1))[0]:
                        best[p] = (top, index)

    for_each_batch(ctx, "detect", process)
    return stored, {p: s for p, (_, s) in best.items()}


def _keep(ctx: RunContext, detections: Detections, host_scores: torch.Tensor, b: int, p: int, k: int):
    """The best ``k`` detections at or above the threshold with a non-empty mask, quantised to 8 bits."""
    scores = host_scores[b, p]
    order = torch.argsort(scores, descending=True, stable=True)[:k]
    order = order[scores[order] >= ctx.threshold]
    if order.numel() == 0:
        return None
    device_order = order.to(detections.mask_logits.device)
    probs = detections.mask_logits[b, p].index_select(0, device_order).float().sigmoid()
    nonempty = (probs > MASK_THRESHOLD).flatten(1).any(dim=1).cpu()
    if not bool(nonempty.any()):
        return None
    probs, order = probs[nonempty.to(probs.device)], order[nonempty]
    quantized = (probs * 255.0).round().to(torch.uint8)
    return StoredDetections(quantized, scores[order].clone())
