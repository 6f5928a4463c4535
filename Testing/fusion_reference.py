"""The fusion rule and the output painting as they were written in numpy on the host, kept as an independent oracle:
the engine now runs them in torch on its device, and Testing/test_fusion.py checks both give the same answers."""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.optimize import linear_sum_assignment

MASK_THRESHOLD = 0.5


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``(M, N)`` of bool masks ``a (M, h, w)`` and ``b (N, h, w)``; 0 where both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    a2 = a.reshape(len(a), int(np.prod(a.shape[1:]))).astype(np.float32)
    b2 = b.reshape(len(b), int(np.prod(b.shape[1:]))).astype(np.float32)
    inter = a2 @ b2.T
    union = a2.sum(1)[:, None] + b2.sum(1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def match_by_iou(iou: np.ndarray, min_iou: float) -> dict[int, int]:
    """One-to-one rows→columns maximising total IoU, keeping pairs with IoU ≥ ``min_iou`` (and > 0)."""
    if iou.size == 0:
        return {}
    rows, cols = linear_sum_assignment(-iou)
    return {int(r): int(c) for r, c in zip(rows, cols) if iou[r, c] >= min_iou and iou[r, c] > 0}


def fuse_slice(
    track_probs: np.ndarray,
    track_presence: np.ndarray,
    track_confidence: np.ndarray,
    det_probs: np.ndarray,
    det_scores: np.ndarray,
    rule,
) -> dict:
    """Apply the fusion rule (module docstring) to one prompt's tracks and detections on one slice.

    Args:
        track_probs: ``(M, h, w)`` tracker mask probabilities.
        track_presence: ``(M,)`` tracker presence probabilities ``q_t``.
        track_confidence: ``(M,)`` confidences ``c_t`` carried from the previous slice.
        det_probs: ``(N, h, w)`` detection mask probabilities on the same grid.
        det_scores: ``(N,)`` detection scores.
        rule: thresholds.
    """
    track_probs = np.asarray(track_probs, dtype=np.float32)
    det_probs = np.asarray(det_probs, dtype=np.float32)
    det_scores = np.asarray(det_scores, dtype=np.float32).reshape(-1)
    evidence = np.asarray(track_presence, dtype=np.float32) * np.asarray(track_confidence, dtype=np.float32)
    num_tracks = len(track_probs)
    probs = track_probs.copy()
    scores = evidence.reshape(num_tracks).copy()
    det_masks = det_probs > MASK_THRESHOLD

    matches = match_by_iou(mask_iou(track_probs > MASK_THRESHOLD, det_masks), rule.match_iou) if num_tracks else {}
    for row, col in matches.items():
        s_d, s_t = float(det_scores[col]), float(evidence[row])
        total = s_d + s_t
        probs[row] = (s_d * det_probs[col] + s_t * track_probs[row]) / total if total > 0 else det_probs[col]
        scores[row] = max(s_d, s_t)

    absorbed: dict[int, int] = {}
    spawn: list[int] = []
    spawn_probs: list[np.ndarray] = []
    # Where the tracker or the fusion puts the object (a matched detection may disagree with part of the track).
    fused_masks = (probs > MASK_THRESHOLD) | (track_probs > MASK_THRESHOLD)
    matched_cols = set(matches.values())
    for col in np.argsort(-det_scores, kind="stable"):
        col = int(col)
        if col in matched_cols:
            continue
        owner = _owner(det_masks[col], fused_masks, rule.absorb_fraction)
        if owner is not None:
            absorbed[col] = owner
            probs[owner] = np.maximum(probs[owner], det_probs[col])
            continue
        # A lower-scoring duplicate of a detection that is starting an object joins it (SAM3 would run NMS here).
        twin = _owner(det_masks[col], np.array([p > MASK_THRESHOLD for p in spawn_probs]), rule.absorb_fraction)
        if twin is not None:
            spawn_probs[twin] = np.maximum(spawn_probs[twin], det_probs[col])
        elif det_scores[col] >= rule.spawn_score and det_masks[col].any():
            spawn.append(col)
            spawn_probs.append(det_probs[col].copy())

    nonempty = (probs > MASK_THRESHOLD).reshape(num_tracks, -1 if num_tracks else 0).any(axis=1)
    present = (scores >= rule.keep_score) & nonempty
    shape = (0,) + det_probs.shape[1:]
    stacked = np.stack(spawn_probs) if spawn_probs else np.zeros(shape, np.float32)
    return dict(probs=probs, scores=scores, present=present, matches=matches, absorbed=absorbed, spawn=spawn,
                spawn_probs=stacked)


def _owner(mask: np.ndarray, fused_masks: np.ndarray, fraction: float) -> Optional[int]:
    """The fused object covering at least ``fraction`` of ``mask`` (the one covering most), if any."""
    area = int(mask.sum())
    if area == 0 or len(fused_masks) == 0:
        return None
    covered = (fused_masks & mask[None]).reshape(len(fused_masks), -1).sum(axis=1)
    best = int(np.argmax(covered))
    return best if covered[best] >= fraction * area else None


def paint_sequentially(confidence: np.ndarray, owner: np.ndarray, probs, scores, ids) -> None:
    """The former one-object-at-a-time painting of one slice (pixel-wise maximum, strict improvement wins)."""
    for prob, score, object_id in zip(probs, scores, ids):
        conf = prob * np.float32(score)
        win = (prob > MASK_THRESHOLD) & (conf > confidence)
        confidence[win] = conf[win]
        owner[win] = object_id
