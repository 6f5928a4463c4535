"""Fusing the detector's and the tracker's view of each slice, and the life cycle of 3D objects (tracks).

No model, only tensors on the engine's device: the engine hands in probabilities on the model's low-resolution
grid, one prompt at a time (objects of different prompts are never matched to each other — "liver" and "liver
tumour" may overlap; the final label map resolves overlaps between prompts by pixel-wise maximum confidence).

The rule, applied on every slice after the tracker has propagated the prompt's live objects
---------------------------------------------------------------------------------------------
Notation: a detection *d* has a mask probability map ``p_d`` and a score ``s_d`` (``sigmoid(logit)·sigmoid(presence)``,
only detections at or above the user's threshold are passed in). A track *t* has the tracker's mask probability
``p_t``, the tracker's presence probability ``q_t`` (``sigmoid`` of its object-score logit) and the confidence
``c_t`` it carried out of the previous slice. Its evidence on this slice is ``s_t = q_t · c_t``.

1. **Match** tracks to detections one-to-one by mask IoU (masks ``p > 0.5``), maximising total IoU (Hungarian);
   a pair counts only at IoU ≥ ``match_iou``. Why IoU and not box distance: organs are not boxes, and SAM3's own
   video model associates by mask IoU too.
2. **Matched pair** → one object with confidence ``max(s_d, s_t)``. At mask IoU ≥ ``recondition_iou`` the detection
   **reconditions** the object: its mask is the detection's, ``p = p_d``. Below that (or with ``recondition_iou``
   ``None``) the two are averaged, ``p = (s_d·p_d + s_t·p_t) / (s_d + s_t)``. Why the detection wins a confident
   match: the detector sees the slice afresh (no drift), and measured on held-out phantoms the tracker's mask is
   almost never the better of the two where both exist (``training.tracker.diagnose``), so averaging only lets drift
   in; SAM3's own video model reconditions its tracklets with matching detections for the same reason. The fused
   mask, not the raw tracker mask, goes into the memory bank, so a detection corrects the tracker's drift from the
   next slice on.
3. **Unmatched track** → the tracker's mask alone with confidence ``s_t``. Without a confirming detection the
   confidence therefore decays geometrically with the tracker's presence probability.
4. **Unmatched detection** → if at least ``absorb_fraction`` of it lies inside an object on this slice (its tracked or
   its fused mask), it is *absorbed* into that object (pixel-wise max of probabilities): a structure that splits into
   two pieces within the slice (a bifurcating vessel, the two lobes of a gland) keeps one 3D identity. An object
   that matched no detection on the slice but absorbs one is reconditioned by it instead (its mask becomes the
   detection's, further absorbed pieces are added): a detection lying inside a tracked mask that is far larger than
   it (IoU below ``match_iou``) says the tracker's mask has spread over the neighbourhood. Otherwise, if
   ``s_d ≥ spawn_score``, it **starts a new object** (new id) seeded with its mask — unless it duplicates a
   better-scoring detection that is starting an object on this slice (same ``absorb_fraction`` test), in which case it
   joins that one (offline, transformers' SAM3 skips its NMS, so duplicates do reach us).
5. **Presence and ending**: an object is on the slice when its confidence ≥ ``keep_score`` and its mask is not empty;
   otherwise it contributes nothing to the output and counts a miss. ``patience`` consecutive misses **end** the
   track (an organ has ended; one doubtful slice inside it does not end it). Ended objects keep their id; a later
   detection of the same concept becomes a new object.
6. **Confirmation by detections** (after both sweeps, :meth:`TrackBook.unconfirmed_slices`): an object is kept only if
   detections support it (its seed, matched or absorbed detections) on at least ``min_detections`` slices — a lone
   detection that nothing confirms on a neighbouring slice is the typical false positive, and SAM3's video model
   likewise confirms a new masklet by further detections before it reports it. Where the tracker carries an object
   on without a detection, at most ``extend_slices`` such slices are kept beyond its first and last detected slice
   (``None``: as far as the tracker's presence goes); gaps between detected slices are always kept, which is where
   propagation fills a missed detection. The engine applies this as it sweeps: a tracker-only slice past that limit
   is held back and painted only once a later detection of the object confirms the gap, so an object carried past
   the organ's end never covers another object's voxels. An object that goes more than ``keep_alive`` slices
   without a detection ends there (SAM3's video model likewise retires masklets that detections stop matching):
   a tracker that has drifted off its organ stops holding a place among the prompt's ``max_objects``, where it
   would keep the organ's next detections from starting an object.

Why these defaults (``recondition_iou`` 0.5, ``extend_slices`` 0, ``keep_alive`` 1, ``min_detections`` 1): they were
chosen on 24 held-out phantoms with the one trained tracker that can be run here, the demo model's
(``training/DEMO_MODEL.md``; ``training.tracker.compare``). That tracker follows the liver and the aorta but loses
the spleen and the kidneys within a few slices. With the former rule (averaging, objects carried as far as the
tracker's presence went) track mode scored mean 3D Dice 0.592 against detect mode's 0.778; with these defaults it
scores 0.777. Each step helped: not painting tracker-only slices past an object's detections (0.737), retiring
objects after one slice without a detection (0.776; after three slices: 0.757), and reconditioning an object by a
detection it absorbs (0.777; the aorta of the bundled demo scan 0.636 → 0.668). Requiring two detections per object
removed nearly every spleen and kidney (0.400), because that tracker rarely carries them to the next slice's
detection, so it is off. A tracker that follows every organ (SAM3's pretrained one) may warrant a longer
``keep_alive`` and confirmation; that is not yet measured.

Identities: an object keeps its id across all slices of both propagation directions; ids are unique in the volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from medsam3_core.engine.postprocess import MASK_THRESHOLD

__all__ = ["FusionRule", "SliceFusion", "Track", "TrackBook", "mask_iou", "match_by_iou", "fuse_slice"]


@dataclass(frozen=True)
class FusionRule:
    """Thresholds of the fusion rule (module docstring). ``spawn_score``/``keep_score`` default to the user's
    detection threshold in the engine."""

    match_iou: float = 0.3
    spawn_score: float = 0.5
    keep_score: float = 0.5
    patience: int = 2
    absorb_fraction: float = 0.5
    recondition_iou: Optional[float] = 0.5
    min_detections: int = 1
    extend_slices: Optional[int] = 0
    keep_alive: Optional[int] = 1

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError("patience must be at least 1")
        if self.min_detections < 1:
            raise ValueError("min_detections must be at least 1")
        for name in ("extend_slices", "keep_alive"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be 0 or more (or None for no limit)")
        for name in ("match_iou", "spawn_score", "keep_score", "absorb_fraction", "recondition_iou"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")


@dataclass
class SliceFusion:
    """Outcome of :func:`fuse_slice` for one prompt on one slice (tensors on the engine's device, except ``scores``
    and ``present``, which the bookkeeping reads on the host).

    Attributes:
        probs: ``(M, h, w)`` fused probabilities of the M tracks (same order as given).
        scores: ``(M,)`` fused confidence of each track on this slice (host, float32).
        present: ``(M,)`` whether each track is on this slice (rule 5; host, bool).
        matches: ``{track row: detection index}`` of matched pairs (rule 2).
        absorbed: ``{detection index: track row}`` of detections merged into an object (rule 4).
        spawn: detection indices that start new objects, best score first.
        spawn_probs: ``(S, h, w)`` their probabilities, merged with lower-scoring duplicates (pixel-wise max).
    """

    probs: torch.Tensor
    scores: torch.Tensor
    present: torch.Tensor
    matches: dict[int, int] = field(default_factory=dict)
    absorbed: dict[int, int] = field(default_factory=dict)
    spawn: list[int] = field(default_factory=list)
    spawn_probs: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 0, 0)))


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix ``(M, N)`` of bool masks ``a (M, h, w)`` and ``b (N, h, w)``; 0 where both are empty.

    Counts are exact in float32 up to 2^24 pixels per mask (the low-res grid has 288² = 82 944)."""
    a2 = torch.as_tensor(a).flatten(1).float()
    b2 = torch.as_tensor(b).flatten(1).float()
    inter = a2 @ b2.T
    union = a2.sum(1)[:, None] + b2.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def match_by_iou(iou: np.ndarray, min_iou: float) -> dict[int, int]:
    """One-to-one rows→columns maximising total IoU, keeping pairs with IoU ≥ ``min_iou`` (and > 0)."""
    iou = np.asarray(iou)
    if iou.size == 0:
        return {}
    rows, cols = linear_sum_assignment(-iou)
    return {int(r): int(c) for r, c in zip(rows, cols) if iou[r, c] >= min_iou and iou[r, c] > 0}


def fuse_slice(
    track_probs: torch.Tensor,
    track_presence: torch.Tensor,
    track_confidence: Sequence[float],
    det_probs: torch.Tensor,
    det_scores: torch.Tensor,
    rule: FusionRule,
) -> SliceFusion:
    """Apply the fusion rule (module docstring) to one prompt's tracks and detections on one slice.

    Runs on the device of ``track_probs``/``det_probs``. What the host needs to decide is copied once as a few small
    matrices (IoU of tracks × detections for the Hungarian matching, detection coverage by the fused objects, scores);
    only a detection that may duplicate another one starting an object on the slice costs one more small copy.

    Args:
        track_probs: ``(M, h, w)`` tracker mask probabilities (tensors, or arrays: taken as CPU tensors).
        track_presence: ``(M,)`` tracker presence probabilities ``q_t``.
        track_confidence: ``(M,)`` confidences ``c_t`` carried from the previous slice.
        det_probs: ``(N, h, w)`` detection mask probabilities on the same grid.
        det_scores: ``(N,)`` detection scores.
        rule: thresholds.
    """
    track_probs, det_probs = torch.as_tensor(track_probs), torch.as_tensor(det_probs)
    device = det_probs.device if det_probs.numel() else track_probs.device
    track_probs = track_probs.to(device=device, dtype=torch.float32)
    det_probs = det_probs.to(device=device, dtype=torch.float32)
    scores_host = torch.as_tensor(det_scores, dtype=torch.float32).reshape(-1).cpu()
    num_tracks = track_probs.shape[0]
    presence = torch.as_tensor(track_presence, dtype=torch.float32).reshape(num_tracks).cpu()
    evidence = presence * torch.as_tensor(list(track_confidence), dtype=torch.float32).reshape(num_tracks)
    probs = track_probs.clone()
    scores = evidence.clone()
    det_masks = det_probs > MASK_THRESHOLD
    track_masks = track_probs > MASK_THRESHOLD

    iou = mask_iou(track_masks, det_masks).cpu().numpy() if num_tracks else np.zeros((0, len(scores_host)))
    matches = match_by_iou(iou, rule.match_iou) if num_tracks else {}
    det_score_list, evidence_list = scores_host.tolist(), evidence.tolist()  # exact: float32 values as floats
    for row, col in matches.items():
        s_d, s_t = det_score_list[col], evidence_list[row]
        total = s_d + s_t
        if rule.recondition_iou is not None and iou[row, col] >= rule.recondition_iou:
            probs[row] = det_probs[col]
        elif total > 0:
            weighted = s_d * det_probs[col] + s_t * track_probs[row]
            probs[row] = weighted / torch.full_like(weighted, total)
        else:
            probs[row] = det_probs[col]
        scores[row] = max(s_d, s_t)

    # Where the tracker or the fusion puts the object (a matched detection may disagree with part of the track).
    fused_masks = (probs > MASK_THRESHOLD) | track_masks
    det_flat = det_masks.flatten(1).float()
    covered = (det_flat @ fused_masks.flatten(1).float().T).cpu().tolist()  # (N, M) exact pixel counts
    areas = det_flat.sum(1).cpu().tolist()
    may_spawn = (scores_host >= rule.spawn_score).tolist()  # compared in float32, as the scores are
    absorbed: dict[int, int] = {}
    spawn: list[int] = []
    spawn_probs: list[torch.Tensor] = []
    matched_cols = set(matches.values())
    for col in torch.argsort(-scores_host, stable=True).tolist():
        if col in matched_cols:
            continue
        owner = _owner(covered[col], areas[col], rule.absorb_fraction)
        if owner is not None:
            if rule.recondition_iou is not None and owner not in matches and owner not in absorbed.values():
                probs[owner] = det_probs[col]  # inside the object but far smaller: the tracker's mask has spread
            else:
                probs[owner] = torch.maximum(probs[owner], det_probs[col])
            absorbed[col] = owner
            continue
        # A lower-scoring duplicate of a detection that is starting an object joins it (SAM3 would run NMS here).
        twin = None
        if spawn_probs and areas[col] > 0:
            starting = torch.stack(spawn_probs) > MASK_THRESHOLD
            twin_cover = (starting & det_masks[col][None]).flatten(1).sum(1).cpu().tolist()
            twin = _owner(twin_cover, areas[col], rule.absorb_fraction)
        if twin is not None:
            spawn_probs[twin] = torch.maximum(spawn_probs[twin], det_probs[col])
        elif may_spawn[col] and areas[col] > 0:
            spawn.append(col)
            spawn_probs.append(det_probs[col].clone())

    nonempty = (probs > MASK_THRESHOLD).flatten(1).any(dim=1).cpu()
    present = (scores >= rule.keep_score) & nonempty
    stacked = torch.stack(spawn_probs) if spawn_probs else det_probs.new_zeros((0,) + tuple(det_probs.shape[1:]))
    return SliceFusion(probs, scores, present, matches, absorbed, spawn, stacked)


def _owner(covered: list, area: float, fraction: float) -> Optional[int]:
    """The fused object covering at least ``fraction`` of a mask of ``area`` pixels (the one covering most, the first
    of equals), given the pixels ``covered`` by each object (host, a few numbers)."""
    if area == 0 or not covered:
        return None
    best = max(range(len(covered)), key=covered.__getitem__)
    return best if covered[best] >= fraction * area else None


@dataclass
class Track:
    """One 3D object: its id, prompt, seed slice and per-slice confidences.

    ``confidence`` is ``c_t`` of the rule (carried to the next slice); ``misses`` counts consecutive slices off
    the object; ``slice_scores`` holds the confidence on every slice where the object is present; ``detected`` the
    slices where a detection supports it (seed, match or absorption; rule 6).
    """

    track_id: int
    prompt: int
    seed_slice: int
    confidence: float
    misses: int = 0
    active: bool = True
    slice_scores: dict[int, float] = field(default_factory=dict)
    detected: set[int] = field(default_factory=set)

    @property
    def slice_range(self) -> Optional[tuple[int, int]]:
        return (min(self.slice_scores), max(self.slice_scores)) if self.slice_scores else None

    @property
    def score(self) -> float:
        """The object's confidence: its best slice (the paper keeps the highest-confidence mask)."""
        return max(self.slice_scores.values(), default=0.0)


class TrackBook:
    """Creates tracks with unique ids (1, 2, …), applies rule 5 (presence, misses, ending) during the sweeps and
    rule 6 (confirmation) after them."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.tracks: list[Track] = []

    def start(self, prompt: int, slice_index: int, score: float) -> Track:
        """A new object seeded on ``slice_index`` by a detection of ``score`` (present there by construction)."""
        track = Track(len(self.tracks) + 1, prompt, slice_index, float(score), slice_scores={slice_index: float(score)},
                      detected={slice_index})
        self.tracks.append(track)
        return track

    def record(self, track: Track, slice_index: int, score: float, present: bool, detected: bool = False) -> None:
        """Book the fused outcome of ``track`` on a slice (``detected``: a detection was matched to it or absorbed
        into it there); ends it after ``patience`` consecutive misses."""
        track.confidence = float(score)
        if detected and present:
            track.detected.add(slice_index)
        if present:
            track.misses = 0
            track.slice_scores[slice_index] = float(score)
        else:
            track.misses += 1
            if track.misses >= self.patience:
                track.active = False

    def resume_from_seed(self, track: Track) -> None:
        """Prepare ``track`` for the opposite direction: alive again, with the confidence of its seed slice."""
        track.active = True
        track.misses = 0
        track.confidence = track.slice_scores.get(track.seed_slice, track.confidence)

    def live(self, prompt: Optional[int] = None) -> list[Track]:
        return [t for t in self.tracks if t.active and (prompt is None or t.prompt == prompt)]

    def unconfirmed_slices(self, rule: FusionRule, num_slices: int) -> dict[int, list[int]]:
        """Rule 6 on a volume of ``num_slices`` slices: ``{track id: slices to take out of the output}``, and those
        slices dropped from each track's ``slice_scores`` (an object with none left is not reported). A volume with
        fewer slices than ``min_detections`` (a 2D image has one) asks for detections on all of them."""
        needed = min(rule.min_detections, num_slices)
        removed: dict[int, list[int]] = {}
        for track in self.tracks:
            if not track.slice_scores:
                continue
            if len(track.detected) < needed:
                drop = sorted(track.slice_scores)
            elif rule.extend_slices is None:
                drop = []
            else:
                low, high = min(track.detected) - rule.extend_slices, max(track.detected) + rule.extend_slices
                drop = [k for k in sorted(track.slice_scores) if not low <= k <= high]
            for k in drop:
                del track.slice_scores[k]
            if drop:
                removed[track.track_id] = drop
        return removed
