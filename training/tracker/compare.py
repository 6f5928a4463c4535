"""Does the tracker help? Whole-volume inference in ``track`` vs ``detect`` mode on held-out phantoms, per organ.

    python -m training.tracker.compare --model runs/tracker/best --threshold 0.3 --threshold 0.5

Held-out phantoms are the ones DEMO_MODEL.md scores the detector on (24 randomised abdomens, seeds 90 000–90 023,
never seen in training), segmented as whole volumes by the inference engine (:class:`medsam3_core.engine.volume_engine
.VolumeEngine`) for liver, spleen, kidney and aorta. Both modes run on the same loaded model, so the only difference
is the tracker and the fusion. Per organ, averaged over cases (:func:`organ_scores`):

* **Dice**: 3D Dice (:func:`medsam3_core.metrics.dice`) against the phantom's label map;
* **false-positive slices**: slices where the organ is absent from the ground truth but the prompt painted
  something, the errors a tracker that knows "absent" should remove;
* **instances**: 3D connected components of the painted organ, next to the ground truth's (two kidneys are two).

``--demo-scan`` also scores the bundled demo CT that way. :func:`track_wins` is the rule for shipping a tracker
(track ≥ detect + 0.02 Dice for every organ, false-positive slices at least halved); the command prints its verdict
per threshold.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable, Optional, Sequence

import numpy as np
from scipy import ndimage

from medsam3_core.engine.volume_engine import VolumeEngine
from medsam3_core.io.geometry import Volume
from medsam3_core.metrics import dice
from medsam3_core.model.bundle import load_model
from medsam3_core.phantom import LABELS
from medsam3_core.segmenter import SegmentOptions

from training.data.phantom_source import phantom_cases

__all__ = ["ORGAN_METRICS", "organ_scores", "volume_scores", "heldout_volume_dice", "demo_scan_scores", "track_wins",
           "format_dice", "main"]

#: What :func:`organ_scores` measures per organ: 3D Dice, false-positive slices, painted and true instances.
ORGAN_METRICS = ("dice", "fp_slices", "instances", "gt_instances")
_CONNECTIVITY_3D = np.ones((3, 3, 3), dtype=bool)


def organ_scores(pred: np.ndarray, truth: np.ndarray, axis: int = 0) -> dict[str, float]:
    """:data:`ORGAN_METRICS` of one organ: binary ``pred`` and ``truth`` volumes, slices along ``axis``."""
    other = tuple(a for a in range(pred.ndim) if a != axis)
    painted, present = pred.any(axis=other), truth.any(axis=other)
    return {
        "dice": dice(pred, truth),
        "fp_slices": float(np.count_nonzero(painted & ~present)),
        "instances": float(ndimage.label(pred, structure=_CONNECTIVITY_3D)[1]),
        "gt_instances": float(ndimage.label(truth, structure=_CONNECTIVITY_3D)[1]),
    }


def heldout_volume_dice(
    model: str,
    thresholds: Sequence[float] = (0.5,),
    modes: Sequence[str] = ("detect", "track"),
    cases: int = 24,
    seed: int = 90000,
    family: Optional[str] = None,
    spacing: Optional[tuple[float, float]] = None,
) -> dict[tuple[str, float], dict[str, dict[str, float]]]:
    """``{(mode, threshold): {organ: {metric: mean over cases}, "mean": …}}`` (:data:`ORGAN_METRICS`) over
    ``cases`` phantoms from ``seed``; the ``"mean"`` entry averages the organs.

    By default the phantoms are those of the demo's training grid; ``family`` (``"train"`` or ``"heldout"`` organ
    shapes) puts each case on a varied grid instead (:func:`training.data.phantom_source.varied_geometry`), at
    ``spacing`` = ``(in-plane, thickness)`` mm when given."""
    if family is None and spacing is None:
        phantoms = phantom_cases("heldout", cases, seed)
    else:
        phantoms = phantom_cases("heldout", cases, seed, varied=True, family=family or "train", spacing=spacing)
    return volume_scores(model, (case.load() for case in phantoms), thresholds, modes)


def demo_scan_scores(
    model: str, thresholds: Sequence[float] = (0.5,), modes: Sequence[str] = ("detect", "track")
) -> dict[tuple[str, float], dict[str, dict[str, float]]]:
    """The same table for the bundled demo CT (read as CT, as ``medsam3 infer demo`` reads it)."""
    from medsam3_core.io.reading import read_volume
    from medsam3_core.phantom import demo_paths

    paths = demo_paths()
    pair = (read_volume(paths.ct, modality="CT"), read_volume(paths.labels).array)
    return volume_scores(model, [pair], thresholds, modes)


def volume_scores(
    model: str,
    pairs: Iterable[tuple[Volume, np.ndarray]],
    thresholds: Sequence[float] = (0.5,),
    modes: Sequence[str] = ("detect", "track"),
) -> dict[tuple[str, float], dict[str, dict[str, float]]]:
    """Segment each ``(volume, labels)`` (label values of :data:`medsam3_core.phantom.LABELS`) for every organ in
    each mode and at each threshold, and average :func:`organ_scores` over the pairs."""
    engine = VolumeEngine(load_model(model, device="cpu"))
    values = sorted(LABELS)
    concepts = [LABELS[v] for v in values]
    scores: dict[tuple[str, float], dict[str, list[dict[str, float]]]] = {}
    for volume, labels in pairs:
        for mode in modes:
            for threshold in thresholds:
                result = engine.run(volume, concepts, SegmentOptions(mode=mode, threshold=threshold))
                per = scores.setdefault((mode, threshold), {c: [] for c in concepts})
                for k, (value, concept) in enumerate(zip(values, concepts), start=1):
                    per[concept].append(organ_scores(result.labels == k, labels == value, result.slice_axis))
    return {key: mean_scores(per) for key, per in scores.items()}


def track_wins(table: dict[tuple[str, float], dict[str, dict[str, float]]], threshold: float,
               margin: float = 0.02) -> tuple[bool, list[str]]:
    """The rule for shipping a tracker: at ``threshold``, track mode's Dice is at least detect mode's + ``margin``
    for every organ, and its false-positive slices (all organs together) are at most half of detect mode's.
    Returns the verdict and, per failed condition, why."""
    detect, track = table[("detect", threshold)], table[("track", threshold)]
    organs = [o for o in detect if o != "mean"]
    why = [f"{o}: track Dice {track[o]['dice']:.3f} < detect {detect[o]['dice']:.3f} + {margin:g}"
           for o in organs if track[o]["dice"] < detect[o]["dice"] + margin]
    fp_detect = sum(detect[o]["fp_slices"] for o in organs)
    fp_track = sum(track[o]["fp_slices"] for o in organs)
    if fp_track > fp_detect / 2:
        why.append(f"false-positive slices {fp_track:.1f} (track) > half of {fp_detect:.1f} (detect)")
    return not why, why


def mean_scores(per: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per organ, each metric averaged over cases; ``"mean"`` averages the organs."""
    means = {organ: {m: float(np.mean([r[m] for r in rows])) for m in ORGAN_METRICS} for organ, rows in per.items()}
    means["mean"] = {m: float(np.mean([v[m] for v in means.values()])) for m in ORGAN_METRICS}
    return means


def format_dice(table: dict[tuple[str, float], dict[str, dict[str, float]]], sort: bool = True) -> str:
    """Markdown: one row per (mode, threshold), ``Dice / false-positive slices / instances (truth)`` per organ
    (rows by threshold, then mode; ``sort=False`` keeps the table's order)."""
    organs = list(next(iter(table.values())))
    lines = ["Dice / false-positive slices / instances (ground truth) per organ, mean over cases", "",
             "| mode | threshold | " + " | ".join(organs) + " |", "|---|---|" + "---|" * len(organs)]
    items = sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])) if sort else table.items()
    for (mode, threshold), means in items:
        cells = [f"{v['dice']:.3f} / {v['fp_slices']:.1f} / {v['instances']:.1f} ({v['gt_instances']:.1f})"
                 for v in (means[o] for o in organs)]
        lines.append(f"| {mode} | {threshold:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.tracker.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo", help="model folder (default: the bundled demo model)")
    p.add_argument("--threshold", type=float, action="append", help="score threshold(s) (default 0.5)")
    p.add_argument("--cases", type=int, default=24, help="held-out phantoms (default 24)")
    p.add_argument("--seed", type=int, default=90000, help="first held-out seed (default 90000)")
    p.add_argument("--family", choices=("train", "heldout"), default=None,
                   help="phantoms on varied grids with these organ shapes (default: the demo's training grid)")
    p.add_argument("--spacing", default=None, help="with --family: fixed 'INPLANE,THICKNESS' in mm, e.g. 0.8,2.5")
    p.add_argument("--modes", default="detect,track", help="modes to run, comma-separated (default detect,track)")
    p.add_argument("--demo-scan", action="store_true", help="also score the bundled demo CT")
    args = p.parse_args(argv)
    thresholds = args.threshold or [0.5]
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    spacing = tuple(float(v) for v in args.spacing.split(",")) if args.spacing else None
    if args.cases > 0:
        table = heldout_volume_dice(args.model, thresholds, modes, args.cases, args.seed, args.family, spacing)
        where = f"family {args.family}, spacing {args.spacing or 'varied'}, " if args.family or spacing else ""
        print(f"held-out phantoms ({where}{args.cases} from seed {args.seed}):\n{format_dice(table)}\n", flush=True)
        for threshold in thresholds if set(modes) >= {"detect", "track"} else ():
            wins, why = track_wins(table, threshold)
            print(f"threshold {threshold:g}: track mode " + ("wins" if wins else "does not win: " + "; ".join(why)))
    if args.demo_scan:
        table = demo_scan_scores(args.model, thresholds, modes)
        print(f"\ndemo scan (whole-volume inference, read as CT):\n{format_dice(table)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
