"""Overlap and surface metrics for evaluation and training: Dice, IoU, HD95, average surface distance.

Empty masks follow one explicit convention (the paper's evaluation, but counting empty images instead of skipping
them): both empty → perfect (Dice = IoU = 1, distances 0); exactly one empty → Dice = IoU = 0 and distances
``inf``. So a mask predicted where there is nothing counts as a false positive, and a missed object as a miss.

Surface distances need the voxel spacing **in array-axis order**; for a :class:`~medsam3_core.io.geometry.Volume`
(spacing is ``(i, j, k)`` and the array ``[k, j, i]``) pass ``volume.spacing[::-1]``.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "dice",
    "iou",
    "dice_per_label",
    "iou_per_label",
    "surface_distances",
    "hausdorff95",
    "average_surface_distance",
]


def _pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred).astype(bool, copy=False), np.asarray(gt).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    return pred, gt


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """``2|P∩G| / (|P|+|G|)`` of two binary masks; 1.0 when both are empty."""
    pred, gt = _pair(pred, gt)
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(pred, gt).sum()) / total


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """``|P∩G| / |P∪G|`` of two binary masks; 1.0 when both are empty."""
    pred, gt = _pair(pred, gt)
    union = int(np.logical_or(pred, gt).sum())
    return 1.0 if union == 0 else int(np.logical_and(pred, gt).sum()) / union


def _labels(pred: np.ndarray, gt: np.ndarray, labels: Optional[Iterable[int]]) -> list[int]:
    if labels is not None:
        return [int(v) for v in labels]
    found = np.union1d(np.unique(pred), np.unique(gt))
    return [int(v) for v in found if v != 0]


def dice_per_label(pred: np.ndarray, gt: np.ndarray, labels: Optional[Iterable[int]] = None) -> dict[int, float]:
    """Dice of each label of two label maps (default: every non-zero label present in either)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    return {label: dice(pred == label, gt == label) for label in _labels(pred, gt, labels)}


def iou_per_label(pred: np.ndarray, gt: np.ndarray, labels: Optional[Iterable[int]] = None) -> dict[int, float]:
    """IoU of each label of two label maps (default: every non-zero label present in either)."""
    pred, gt = np.asarray(pred), np.asarray(gt)
    return {label: iou(pred == label, gt == label) for label in _labels(pred, gt, labels)}


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with a face neighbour outside it (the array border counts as outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``pred`` to ``gt``'s surface, and from ``gt``'s to ``pred``'s.

    Both arrays are empty when both masks are; when exactly one is empty the other direction has no target and is
    reported as ``[inf]``.
    """
    pred, gt = _pair(pred, gt)
    sampling = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * pred.ndim
    if len(sampling) != pred.ndim:
        raise ValueError(f"spacing needs {pred.ndim} values (array-axis order), got {len(sampling)}")
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return np.zeros(0), np.zeros(0)
    if not (has_pred and has_gt):
        return np.array([np.inf]), np.array([np.inf])
    pred_surface, gt_surface = _surface(pred), _surface(gt)
    to_gt = ndimage.distance_transform_edt(~gt_surface, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~pred_surface, sampling=sampling)
    return to_gt[pred_surface], to_pred[gt_surface]


def hausdorff95(pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm: the larger of the two directed 95th percentiles."""
    forward, backward = surface_distances(pred, gt, spacing)
    if forward.size == 0:
        return 0.0
    if np.isinf(forward).any():
        return float("inf")
    return float(max(np.percentile(forward, 95), np.percentile(backward, 95)))


def average_surface_distance(pred: np.ndarray, gt: np.ndarray, spacing: Optional[Sequence[float]] = None) -> float:
    """Symmetric average surface distance in mm: the mean over both directions' surface voxels."""
    forward, backward = surface_distances(pred, gt, spacing)
    if forward.size == 0:
        return 0.0
    return float(np.concatenate([forward, backward]).mean())
