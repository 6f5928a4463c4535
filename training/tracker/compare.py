"""Does the tracker help? 3D Dice of whole-volume inference in ``track`` vs ``detect`` mode on held-out phantoms.

    python -m training.tracker.compare --model runs/tracker/best --threshold 0.3 --threshold 0.5

Held-out phantoms are the ones DEMO_MODEL.md scores the detector on (24 randomised abdomens, seeds 90 000–90 023,
never seen in training), segmented as whole volumes by the inference engine (:class:`medsam3_core.engine.volume_engine
.VolumeEngine`) for liver, spleen, kidney and aorta, and scored per organ with 3D Dice
(:func:`medsam3_core.metrics.dice`) against the phantom's label map, averaged over cases. Both modes run on the
same loaded model, so the only difference is the tracker and the fusion. ``--demo-scan`` also segments the bundled
demo CT with the real CLI in both modes and scores its label map
(:func:`training.make_demo_model.score_demo_scan`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from medsam3_core.engine.volume_engine import VolumeEngine
from medsam3_core.metrics import dice
from medsam3_core.model.bundle import DEMO_MODEL_DIR, load_model
from medsam3_core.phantom import LABELS
from medsam3_core.segmenter import SegmentOptions

from training.data.phantom_source import phantom_cases
from training.evaluate import format_table
from training.make_demo_model import score_demo_scan

__all__ = ["heldout_volume_dice", "main"]


def heldout_volume_dice(
    model: str,
    thresholds: Sequence[float] = (0.5,),
    modes: Sequence[str] = ("detect", "track"),
    cases: int = 24,
    seed: int = 90000,
) -> dict[tuple[str, float], dict[str, float]]:
    """``{(mode, threshold): {organ: mean 3D Dice, "mean": …}}`` over ``cases`` phantoms from ``seed``."""
    bundle = load_model(model, device="cpu")
    engine = VolumeEngine(bundle)
    concepts = [LABELS[k] for k in sorted(LABELS)]
    scores: dict[tuple[str, float], dict[str, list[float]]] = {}
    for case in phantom_cases("heldout", cases, seed):
        volume, labels = case.load()
        for mode in modes:
            for threshold in thresholds:
                result = engine.run(volume, concepts, SegmentOptions(mode=mode, threshold=threshold))
                per = scores.setdefault((mode, threshold), {c: [] for c in concepts})
                for k, concept in enumerate(concepts, start=1):
                    value = sorted(LABELS)[k - 1]
                    per[concept].append(dice(result.labels == k, labels == value))
    out = {}
    for key, per in scores.items():
        means = {c: float(np.mean(v)) for c, v in per.items()}
        means["mean"] = float(np.mean(list(means.values())))
        out[key] = means
    return out


def format_dice(table: dict[tuple[str, float], dict[str, float]]) -> str:
    organs = list(next(iter(table.values())))
    lines = ["| mode | threshold | " + " | ".join(organs) + " |", "|---|---|" + "---|" * len(organs)]
    for (mode, threshold), means in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(f"| {mode} | {threshold:g} | " + " | ".join(f"{means[o]:.3f}" for o in organs) + " |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.tracker.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo", help="model folder (default: the bundled demo model)")
    p.add_argument("--threshold", type=float, action="append", help="score threshold(s) (default 0.5)")
    p.add_argument("--cases", type=int, default=24, help="held-out phantoms (default 24)")
    p.add_argument("--seed", type=int, default=90000, help="first held-out seed (default 90000)")
    p.add_argument("--demo-scan", action="store_true", help="also score the bundled demo CT through the CLI")
    args = p.parse_args(argv)
    thresholds = args.threshold or [0.5]
    if args.cases > 0:
        table = heldout_volume_dice(args.model, thresholds, cases=args.cases, seed=args.seed)
        print(f"held-out phantoms ({args.cases} from seed {args.seed}), 3D Dice:\n{format_dice(table)}\n", flush=True)
    if args.demo_scan:
        model = DEMO_MODEL_DIR if args.model == "demo" else Path(args.model)
        for threshold in thresholds:
            for mode in ("detect", "track"):
                with tempfile.TemporaryDirectory() as tmp:
                    rows = score_demo_scan(model, Path(tmp), mode, threshold)
                print(f"demo scan, CLI --mode {mode}, threshold {threshold:g}:\n{format_table(rows)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
