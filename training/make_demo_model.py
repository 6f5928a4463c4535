"""Reproduce the bundled demo model: train the ``demo`` preset, score it on held-out data, install it.

    python -m training.make_demo_model                 # train (≈1 h on one CPU core), evaluate, install
    python -m training.make_demo_model --skip-train    # evaluate/install an existing run
    python -m training.make_demo_model --skip-train --model medsam3_core/assets/demo_model --calibrate
                                                       # (re)state the model's recommended score threshold

Held-out data never seen in training: 24 new phantom cases (seeds from 90 000; training used 1 000–1 039) and
6 new MNI152 intensity variants (seeds from 95 000), scored with :mod:`training.evaluate` (paper protocol, empty
ground truth counted; every instance above the threshold kept, as volume inference paints them) — plus the bundled
demo scan itself, segmented by the real CLI (``medsam3_core.volume infer``) and scored from its output files, which
exercises the same scoring on inference outputs. ``--install`` copies the weights-only float16 folder to
``medsam3_core/assets/demo_model``, which ``--model demo`` loads.

``--calibrate`` finds the model's recommended score threshold the way a training export does
(:func:`training.evaluate.calibrate_threshold`) on the demo run's own validation split — the preset's sources,
seeds and 85/15 split (seed 42), never the held-out data — and writes it into the folder's ``medsam3.json``.
Scores without ``--threshold`` use the model's recommended threshold, as the CLI does.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from medsam3_core.model.bundle import DEMO_MODEL_DIR, load_model
from medsam3_core.model.card import update_card
from medsam3_core.phantom import demo_label_names, demo_paths

from training.config import apply_overrides, load_config
from training.data.sources import build_datasets, datasets_for
from training.evaluate import (
    CALIBRATION_THRESHOLDS,
    Row,
    calibrate_threshold,
    evaluate_model,
    format_table,
    score_files,
    summarize,
    write_report,
)

__all__ = ["evaluate_heldout", "score_demo_scan", "calibrate", "write_score_threshold", "install", "main"]

HELDOUT = ["phantom:24@90000::abdomen-phantom", "mni_brain:6@95000::mni152-brain"]


def evaluate_heldout(
    model_dir: Path, out_dir: Path, instances: str = "all", threshold: Optional[float] = None
) -> list[Row]:
    """Held-out scores at ``threshold`` (``None``: the model's recommended one)."""
    bundle = load_model(str(model_dir), device="cpu")
    threshold = bundle.score_threshold if threshold is None else threshold
    datasets = datasets_for(HELDOUT, bundle.image_size, split="all")
    rows = summarize(evaluate_model(bundle, datasets, threshold, instances=instances))
    write_report(rows, out_dir)
    return rows


def score_demo_scan(
    model_dir: Path, out_dir: Path, mode: str = "detect", threshold: Optional[float] = None
) -> list[Row]:
    """Segment the bundled demo CT with the CLI and score its ``labels.nii.gz`` against the demo ground truth
    (``threshold`` ``None``: no ``--threshold``, so the CLI uses the model's recommended one).

    ``--modality CT``: NIfTI does not record the modality. The CLI recognises Hounsfield values by itself
    (``medsam3_core.io.modality``), but the flag keeps this score independent of that rule.
    """
    names = demo_label_names()
    with tempfile.TemporaryDirectory() as tmp:
        pred = Path(tmp) / "pred"
        gt = Path(tmp) / "gt"
        gt.mkdir()
        (gt / "demo.nii.gz").symlink_to(demo_paths().labels)
        cmd = [sys.executable, "-m", "medsam3_core.volume", "infer", "demo", *[names[k] for k in sorted(names)],
               "-o", str(pred / "demo"), "--model", str(model_dir), "--device", "cpu", "--mode", mode,
               *(["--threshold", str(threshold)] if threshold is not None else []),
               "--modality", "CT", "--progress", "none", "--quiet"]
        subprocess.run(cmd, check=True)
        rows = summarize(score_files(pred, gt, names, dataset=f"demo-scan ({mode})"))
    write_report(rows, out_dir)
    return rows


def calibrate(model_dir: Path, config: str = "demo") -> tuple[float, dict[float, float]]:
    """The recommended score threshold of ``model_dir`` on the validation split of the ``config`` run, scored as
    that run validates (its ``val_max_images`` and ``eval_instances``), and the selection score per threshold."""
    cfg = load_config(config)
    bundle = load_model(str(model_dir), device="cpu")
    _, val_sets, _ = build_datasets(cfg.data, bundle.image_size, cfg.engine.seed, keep_aspect=bundle.keep_aspect)
    return calibrate_threshold(bundle, val_sets, CALIBRATION_THRESHOLDS, cfg.data.val_max_images,
                               instances=cfg.engine.eval_instances)


def write_score_threshold(model_dir: Path, threshold: float) -> Path:
    """Set ``conventions.score_threshold`` in ``model_dir/medsam3.json``, leaving every other key as it is (re-read
    right before it is replaced, so an edit of another key made meanwhile, e.g. a tracker being installed into the
    same folder, is kept)."""
    return update_card(model_dir, {"score_threshold": round(float(threshold), 4)})


def install(model_dir: Path, target: Path = DEMO_MODEL_DIR) -> Path:
    """Copy a weights-only model folder over ``target`` (assembled beside it, then renamed into place)."""
    tmp = Path(tempfile.mkdtemp(prefix=".demo_model-", dir=target.parent))
    try:
        for name in ("config.json", "model.safetensors", "medsam3.json"):
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        tmp.chmod(0o755)  # mkdtemp makes it private; the package folder must be readable by everyone
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.make_demo_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=Path("runs/demo"), help="training output folder (default runs/demo)")
    p.add_argument("--skip-train", action="store_true", help="evaluate the existing run's best model only")
    p.add_argument("--model", type=Path, help="model folder to evaluate (default: <run>/best)")
    p.add_argument("--install", action="store_true", help="copy the model to medsam3_core/assets/demo_model")
    p.add_argument("--threshold", type=float, action="append",
                   help="score threshold(s) (default: the model's recommended one)")
    p.add_argument("--calibrate", action="store_true",
                   help="find the model's recommended threshold on the demo run's validation split and write it "
                        "into its medsam3.json (before scoring)")
    args = p.parse_args(argv)
    if not args.skip_train:
        from training.engine.trainer import Trainer

        trainer = Trainer(apply_overrides(load_config("demo"), [f"run.output_dir={args.run}"]))
        try:
            trainer.fit()
        finally:
            trainer.close()
    model_dir = args.model or args.run / "best"
    if args.calibrate:
        threshold, selection = calibrate(model_dir)
        curve = "  ".join(f"{t:g}: {v:.3f}" for t, v in selection.items())
        print(f"validation selection score by threshold: {curve}\nrecommended threshold {threshold:g} written to "
              f"{write_score_threshold(model_dir, threshold)}\n", flush=True)
    recommended = load_model(str(model_dir), device="cpu").score_threshold
    for t in args.threshold or [None]:
        name = f"{recommended:g} (the model's recommended one)" if t is None else f"{t:g}"
        tag = "model" if t is None else f"{t:g}"
        for instances in ("all", "top1"):
            rows = evaluate_heldout(model_dir, args.run / f"heldout-{instances}-{tag}", instances, t)
            print(f"held-out, instances={instances}, threshold {name}:\n{format_table(rows)}\n", flush=True)
        for mode in ("detect", "track"):
            rows = score_demo_scan(model_dir, args.run / f"demo-scan-{mode}-{tag}", mode, t)
            print(f"bundled demo scan, CLI --mode {mode}, threshold {name}:\n{format_table(rows)}\n", flush=True)
    if args.install:
        print(f"installed {install(model_dir)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
