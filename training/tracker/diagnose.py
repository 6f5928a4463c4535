"""Where does track mode lose against detect mode? Oracle experiments that separate seeding, drift and fusion.

    python -m training.tracker.diagnose --model runs/tracker/best --threshold 0.15 --cases 8

Track mode (:mod:`medsam3_core.engine.volume_engine`) seeds an object from a detection, propagates it with the
memory tracker and fuses tracker and detector masks slice by slice. Each variant below changes one of those steps,
on the same held-out phantoms and weights as :mod:`training.tracker.compare`, scored per organ with
:func:`training.tracker.compare.organ_scores` (3D Dice, false-positive slices, instances):

``detect``
    detect mode: every detection at or above the threshold, no tracker.
``track``
    track mode as users run it.
``oracle-fusion``
    on every slice, per organ, whichever of ``detect`` and ``track`` agrees better with the ground truth (the
    higher slice Dice, or the smaller mask where the organ is absent). The best that any per-slice choice between
    the two could do: the gap ``oracle-fusion − track`` is what the fusion decisions cost.
``detect, temporal oracle``
    detect mode corrected by the ground truth in every way that reasoning *across* slices could correct it, and in
    no other: slices painted where the organ is absent are emptied, 3D components that touch no part of the organ
    are removed, and slices where the organ is present but nothing was painted get the true mask. The in-plane
    outline of every detected slice is left as it is. ``temporal oracle − detect`` is the most that any tracker
    which only decides *where along the slice axis* an organ is (presence, identity, filling missed slices) could
    add; beyond it only better per-slice masks help.
``tracker, gt seed``
    no detector at all: every ground-truth 3D component is seeded from its ground-truth mask on the slice where it
    is largest and propagated teacher-free (the tracker's own masks remembered, its object score deciding
    presence) to both ends of the volume. ``1 − Dice`` here is propagation drift alone.
``tracker, detector seed``
    the same, seeded instead from detect mode's mask on that slice (its 2D components touching the object). The
    gap to the ground-truth seed is what seeding from a detection costs; the gap from here to ``track`` is what the
    fusion adds or removes on top of pure propagation.

The oracles use the ground truth and are diagnostics only, never a way to segment.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medsam3_core.engine.preprocess import IntensityNormalizer, Letterbox, slice_stack, to_model_input
from medsam3_core.engine.tracker import MemoryTracker
from medsam3_core.engine.volume_engine import VolumeEngine
from medsam3_core.io.geometry import Volume
from medsam3_core.metrics import dice
from medsam3_core.model.bundle import Sam3Bundle, load_model
from medsam3_core.phantom import LABELS
from medsam3_core.segmenter import SegmentOptions

from training.data.phantom_source import phantom_cases
from training.tracker.compare import format_dice, mean_scores, organ_scores

__all__ = ["VARIANTS", "oracle_slice_choice", "temporal_oracle", "propagate_seeds", "diagnose_case", "diagnose", "main"]

VARIANTS = ("detect", "track", "oracle-fusion", "detect, temporal oracle", "tracker, gt seed", "tracker, detector seed")
_CONNECTIVITY_3D = np.ones((3, 3, 3), dtype=bool)


def oracle_slice_choice(detect: np.ndarray, track: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per slice (axis 0) the better of two binary predictions of one organ (module docstring, ``oracle-fusion``)."""
    out = np.empty_like(truth, dtype=bool)
    for k in range(truth.shape[0]):
        a, b, t = detect[k], track[k], truth[k]
        if t.any():
            out[k] = a if dice(a, t) >= dice(b, t) else b
        else:
            out[k] = a if a.sum() <= b.sum() else b
    return out


def temporal_oracle(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``pred`` (one organ, slices along axis 0) corrected only along the slice axis (module docstring,
    ``detect, temporal oracle``)."""
    present = truth.any(axis=(1, 2))
    components, _ = ndimage.label(pred, structure=_CONNECTIVITY_3D)
    touching = np.unique(components[truth & (components > 0)])
    out = np.isin(components, touching[touching > 0])
    out[~present] = False
    missed = present & ~pred.any(axis=(1, 2))
    out[missed] = truth[missed]
    return out


@torch.no_grad()
def propagate_seeds(
    bundle: Sam3Bundle, volume: Volume, seeds: Sequence[tuple[int, np.ndarray]], memory_size: int = 7
) -> list[np.ndarray]:
    """Pure teacher-free propagation of each seed ``(slice, mask on that slice)`` to both ends of ``volume``.

    Slices are cut, windowed and letterboxed as the engine does; each object is seeded from its mask, propagated up
    and then (re-seeded) down, remembering its own prediction and painted where its object score is positive.
    Returns one ``(slices, H, W)`` bool array per seed, in slice-stack layout (axis 0 = the axial slice axis).
    """
    stack, _ = slice_stack(volume, "axial")
    normalize = IntensityNormalizer.for_volume(volume)
    height, width = stack.shape[1:3]
    letterbox = Letterbox(height, width, bundle.image_size, keep_aspect=bundle.keep_aspect)
    tracker = MemoryTracker(bundle, min(memory_size, int(bundle.tracker.num_maskmem)), stack.shape[0])
    feats = []
    for start in range(0, stack.shape[0], 8):
        pixels = to_model_input(normalize(stack[start : start + 8]), letterbox, bundle.device, bundle.dtype)
        feats += tracker.features(bundle.detector.get_vision_features(pixel_values=pixels))
    grid = tracker.mask_grid
    outputs = []
    for index, mask in seeds:
        painted = np.zeros(stack.shape[:3], dtype=bool)
        painted[index] = mask
        square = torch.as_tensor(np.asarray(letterbox.mask(mask.astype(np.uint8)))[None], device=bundle.device)
        for direction in (1, -1):
            memories = tracker.seed(feats[index], square, index)
            t = index + direction
            while 0 <= t < stack.shape[0]:
                step = tracker.propagate(feats[t], memories, t)
                logits = step.mask_logits.float()
                if logits.shape[-2:] != grid:
                    logits = F.interpolate(logits[:, None], size=grid, mode="bilinear", align_corners=False)[:, 0]
                if float(step.score_logits[0]) > 0:
                    painted[t] = np.asarray(letterbox.to_original(logits.cpu().numpy())[0]) > 0
                tracker.remember(feats[t], memories, t, step.mask_logits, step.score_logits, step.pointers)
                t += direction
        outputs.append(painted)
    return outputs


def _seeds(truth: np.ndarray, source: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """One seed per 3D component of ``truth``: its largest slice, with ``source``'s 2D components touching it
    there (``source`` = ``truth`` gives the ground-truth seed). A component the source misses gets no seed."""
    components, n = ndimage.label(truth, structure=_CONNECTIVITY_3D)
    seeds = []
    for c in range(1, n + 1):
        area = (components == c).sum(axis=(1, 2))
        k = int(np.argmax(area))
        obj = components[k] == c
        parts, m = ndimage.label(source[k])
        touching = [p for p in np.unique(parts[obj]) if p]
        mask = np.isin(parts, touching) if m and touching else np.zeros_like(obj)
        if mask.any():
            seeds.append((k, mask))
    return seeds


def diagnose_case(
    engine: VolumeEngine, volume: Volume, labels: np.ndarray, threshold: float
) -> dict[str, dict[str, dict[str, float]]]:
    """``{variant: {organ: organ_scores}}`` for one case (labels in :data:`medsam3_core.phantom.LABELS` values)."""
    values = sorted(LABELS)
    concepts = [LABELS[v] for v in values]
    runs = {m: engine.run(volume, concepts, SegmentOptions(mode=m, threshold=threshold)) for m in ("detect", "track")}
    axis = runs["detect"].slice_axis
    out: dict[str, dict[str, dict[str, float]]] = {v: {} for v in VARIANTS}
    for k, (value, concept) in enumerate(zip(values, concepts), start=1):
        truth = np.moveaxis(labels == value, axis, 0)
        det = np.moveaxis(runs["detect"].labels == k, axis, 0)
        trk = np.moveaxis(runs["track"].labels == k, axis, 0)
        variants = {"detect": det, "track": trk, "oracle-fusion": oracle_slice_choice(det, trk, truth),
                    "detect, temporal oracle": temporal_oracle(det, truth)}
        for name, source in (("tracker, gt seed", truth), ("tracker, detector seed", det)):
            seeds = _seeds(truth, source)
            paths = propagate_seeds(engine.bundle, volume, seeds)
            variants[name] = np.logical_or.reduce(paths) if paths else np.zeros_like(truth)
        for name, pred in variants.items():
            out[name][concept] = organ_scores(pred, truth, axis=0)
    return out


def diagnose(model: str, threshold: float, cases: int = 8, seed: int = 90000) -> dict[str, dict[str, dict[str, float]]]:
    """Every variant's :func:`training.tracker.compare.mean_scores` over ``cases`` held-out phantoms."""
    engine = VolumeEngine(load_model(model, device="cpu"))
    if not engine.bundle.has_tracker:
        raise SystemExit(f"{model}: the model has no trained tracker to diagnose")
    per: dict[str, dict[str, list]] = {v: {LABELS[k]: [] for k in sorted(LABELS)} for v in VARIANTS}
    for case in phantom_cases("heldout", cases, seed):
        volume, labels = case.load()
        for variant, organs in diagnose_case(engine, volume, labels, threshold).items():
            for organ, scores in organs.items():
                per[variant][organ].append(scores)
    return {variant: mean_scores(organs) for variant, organs in per.items()}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.tracker.diagnose", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder with a trained tracker")
    p.add_argument("--threshold", type=float, default=0.15, help="score threshold (default 0.15)")
    p.add_argument("--cases", type=int, default=8, help="held-out phantoms (default 8)")
    p.add_argument("--seed", type=int, default=90000, help="first held-out seed (default 90000)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    table = diagnose(args.model, args.threshold, args.cases, args.seed)
    rows = {(variant, args.threshold): organs for variant, organs in table.items()}
    print(f"held-out phantoms ({args.cases} from seed {args.seed}), threshold {args.threshold:g}:")
    print(format_dice(rows, sort=False).replace("| mode |", "| variant |"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
