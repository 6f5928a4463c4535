"""From SAM3's per-query predictions to masks on the original grid, label maps and clean 3D objects.

Follows the paper's evaluation protocol: per prompt take the **highest-confidence** instance; with several prompts
resolve overlaps by **pixel-wise maximum confidence** into one non-overlapping label map. Masks are
``sigmoid(logits) > 0.5`` after resampling, and a detection counts when ``sigmoid(logit)·sigmoid(presence)`` reaches
the score threshold (the same rules as transformers' ``post_process_instance_segmentation``, which itself cannot be
used here because it needs torchvision).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from scipy import ndimage

from medsam3_core.engine.detector import Detections
from medsam3_core.engine.preprocess import Letterbox

__all__ = [
    "MASK_THRESHOLD",
    "Instance",
    "instances_for",
    "top_instance",
    "pixelwise_max_labelmap",
    "largest_component",
    "fill_holes",
    "volume_ml",
]

#: A pixel belongs to an instance when its mask probability exceeds this (SAM3's own mask threshold).
MASK_THRESHOLD = 0.5


@dataclass
class Instance:
    """One detected object on one image/slice, on the original pixel grid.

    Attributes:
        mask: ``(H, W)`` bool.
        box: ``(x1, y1, x2, y2)`` in pixels of the original grid (the detector's box, not the mask's extent).
        score: detection confidence ``sigmoid(logit)·sigmoid(presence)`` in ``[0, 1]``.
        probability: ``(H, W)`` float32 mask probability; the per-pixel confidence used to resolve overlaps.
    """

    mask: np.ndarray
    box: tuple[float, float, float, float]
    score: float
    probability: Optional[np.ndarray] = None

    @property
    def area(self) -> int:
        return int(self.mask.sum())


def instances_for(
    detections: Detections, b: int, p: int, letterbox: Letterbox, threshold: float = 0.5
) -> list[Instance]:
    """Instances of prompt ``p`` on slice ``b`` scoring at least ``threshold``, best first; empty masks dropped.

    Only the queries that pass the threshold are resampled (one ``grid_sample`` from the low-res map straight to
    the original grid), so the cost scales with what is kept, not with SAM3's 200 queries.
    """
    scores = detections.scores[b, p]
    keep = torch.nonzero(scores >= threshold).flatten()
    if keep.numel() == 0:
        return []
    keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
    probs = letterbox.to_original(detections.mask_logits[b, p, keep].float().sigmoid(), mode="bilinear")
    boxes = letterbox.box_to_original(detections.boxes[b, p, keep].double())
    instances = []
    for prob, box, score in zip(probs, boxes.tolist(), scores[keep].tolist()):
        mask = prob > MASK_THRESHOLD
        if mask.any():
            instances.append(Instance(mask.numpy(), tuple(box), float(score), prob.numpy()))
    return instances


def top_instance(instances: Sequence[Instance]) -> Optional[Instance]:
    """The highest-confidence instance (the paper's one mask per prompt), or ``None`` when nothing was found."""
    return max(instances, key=lambda inst: inst.score, default=None)


def pixelwise_max_labelmap(
    prob_maps: np.ndarray, present: Union[np.ndarray, Sequence[float], Sequence[bool]]
) -> tuple[np.ndarray, np.ndarray]:
    """Fuse per-prompt probability maps ``(P, *spatial)`` into one label map (label ``p + 1``) and a confidence map.

    A pixel is a candidate for prompt ``p`` when ``prob_maps[p] > 0.5`` and the prompt is present; among the
    candidates it takes the one with the highest confidence. With boolean ``present`` the confidence is the mask
    probability; with float detection scores it is ``probability × score``, so a confident detection wins the
    overlap against a doubtful one (a score of 0 means absent). Works for 2D and 3D alike.

    Returns:
        ``(labelmap, confidence)``: uint8 (uint16 beyond 255 prompts) and float32 (0 on background).
    """
    probs = np.asarray(prob_maps)
    weights = np.asarray(present)
    if probs.ndim < 2 or weights.shape != (probs.shape[0],):
        raise ValueError(f"expected prob_maps (P, ...) and present (P,), got {probs.shape} and {weights.shape}")
    weights = weights.astype(np.float32)
    # One prompt at a time, so a (P, K, J, I) stack costs only a few volumes of scratch memory, not P of them.
    labelmap = np.zeros(probs.shape[1:], dtype=np.uint8 if probs.shape[0] < 256 else np.uint16)
    best = np.zeros(probs.shape[1:], dtype=np.float32)
    for p in np.flatnonzero(weights > 0):
        prob = np.asarray(probs[p], dtype=np.float32)
        confidence = prob * weights[p]
        wins = (prob > MASK_THRESHOLD) & (confidence > best)
        labelmap[wins] = p + 1
        best[wins] = confidence[wins]
    return labelmap, best


def largest_component(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Keep only the largest connected component of a bool mask (2D or 3D); ``connectivity`` 1 = face neighbours.

    Removes the stray false positives a slice-wise detector leaves far from the organ. Not for prompts that name
    several separate objects (e.g. "kidneys", "lymph nodes"): use it per object, not per prompt.
    """
    mask = np.asarray(mask, dtype=bool)
    labels, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, connectivity))
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def fill_holes(mask: np.ndarray, axis: Optional[int] = None) -> np.ndarray:
    """Fill holes in a bool mask: fully enclosed 3D cavities, or with ``axis`` every 2D hole of each slice.

    A slice-wise segmenter's typical defect is a hole on individual slices (e.g. a vessel inside the liver) that is
    open in 3D and so survives a 3D fill; pass the slicing axis to close those too.
    """
    mask = np.asarray(mask, dtype=bool)
    if axis is None:
        return ndimage.binary_fill_holes(mask)
    out = np.moveaxis(mask.copy(), axis, 0)
    for index in range(out.shape[0]):
        out[index] = ndimage.binary_fill_holes(out[index])
    return np.moveaxis(out, 0, axis)


def volume_ml(voxels: Union[int, float, np.ndarray], spacing: Sequence[float]) -> float:
    """Volume in millilitres of ``voxels`` voxels (a count, or a bool mask to count) of size ``spacing`` mm."""
    count = float(np.count_nonzero(voxels)) if isinstance(voxels, np.ndarray) else float(voxels)
    return count * float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
