"""Evaluation with the paper's protocol, and the ``python -m training.evaluate`` command.

Protocol (the Medical SAM3 paper's, arXiv 2601.10880): every image is queried with every concept of its dataset, text
only; per prompt the
**highest-confidence** instance above the score threshold is kept; overlaps between prompts are resolved by
pixel-wise maximum confidence into one label map; Dice and IoU are computed per (image, concept) and averaged per
dataset. Unlike the public evaluation code, pairs whose ground truth is empty are **counted** (empty prediction →
1, anything predicted → 0), so false positives are visible; the ``dice_present`` column averages only pairs whose
ground truth is non-empty, for comparison with numbers that skip them.

**Two 3D protocols** for label maps of volumes (``--protocol``): ``volume`` scores the whole volume, every slice;
``window8`` is the protocol Medical SAM3's authors published their 3D result with (mean Dice 0.411 against 0.160
for base SAM3, on the CVPR BiomedSegFM 3D validation set): per (volume, concept) only **one window of 8 slices
centred on the slice with the largest ground-truth area** of that concept is scored (:func:`largest_area_window`).
It shows how well a structure is segmented where it is largest, not whether it is found on every slice it crosses or
falsely elsewhere, so its numbers are higher than whole-volume ones; give both to compare with published figures.
A concept absent from the ground truth has no such slice and is scored on the whole volume.

The same scoring (:func:`score_label_maps`) serves two inputs: a model run on a dataset's validation cases
(``--model``), and label-map files written by inference (``medsam3 infer``) against ground-truth files
(``--pred``/``--gt``). Output: a text table, ``metrics.csv`` and a bar plot ``dice.png``.

**Calibration.** A model's detection scores need not be centred on 0.5 (the tiny demo model's aorta scores ≈ 0.35
everywhere), so a training export states the score threshold it works best at (``medsam3.json`` conventions
``score_threshold``, read by ``medsam3_core.model.bundle``). :func:`sweep_thresholds` runs the network once and scores
the same detections at every threshold of a grid; :func:`pick_threshold` takes the one with the best selection score
(:func:`dataset_means`). Without ``--threshold``, ``--model`` is scored at the model's own recommendation.

**Several processes.** Every function that runs the model takes a ``shard = (rank, world_size)``: each process
scores its own share of the slices, and the per-dataset sums (:func:`pair_totals`) are added up across processes
(:func:`distributed_sweep`), so every rank gets the metrics a single process would.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from medsam3_core.io.atomic import atomic_path
from medsam3_core.engine.detector import Detector
from medsam3_core.errors import InputError, MedSam3Error
from medsam3_core.metrics import dice, iou
from medsam3_core.model.bundle import Sam3Bundle
from medsam3_core.engine.postprocess import instances_for, pixelwise_max_labelmap
from medsam3_core.engine.preprocess import to_model_input

from training.engine import distributed as dist

__all__ = [
    "CALIBRATION_THRESHOLDS",
    "PairScore",
    "Row",
    "PROTOCOLS",
    "largest_area_window",
    "score_label_maps",
    "evaluate_model",
    "sweep_thresholds",
    "distributed_sweep",
    "pick_threshold",
    "calibrate_threshold",
    "pair_totals",
    "rows_from_totals",
    "summarize",
    "dataset_means",
    "format_table",
    "write_report",
    "score_files",
    "main",
]


#: Score thresholds a calibration tries: 0.05, 0.10, …, 0.95.
CALIBRATION_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))

#: Sums kept per (dataset, concept): pairs, Dice, IoU, pairs with non-empty ground truth, their Dice.
_TOTAL_FIELDS = 5


@dataclass
class PairScore:
    """Dice/IoU of one (image, concept) pair."""

    dataset: str
    image: str
    concept: str
    dice: float
    iou: float
    gt_empty: bool


@dataclass
class Row:
    """Averages over a dataset (``concept == "all"``) or one of its concepts."""

    dataset: str
    concept: str
    n: int
    dice: float
    iou: float
    n_present: int
    dice_present: float


#: 3D scoring protocols: the whole volume, or the authors' 8-slice window around the largest ground-truth slice.
PROTOCOLS = ("volume", "window8")
#: Slices in the authors' evaluation window.
WINDOW_SLICES = 8


def largest_area_window(mask: np.ndarray, axis: int = 0, length: int = WINDOW_SLICES) -> slice:
    """The ``length`` slices along ``axis`` centred on the slice where ``mask`` has the largest area.

    The centre slice is the ``length // 2``-th of the window (slices ``c - 4 … c + 3`` for 8); at the volume's ends
    the window is shifted inwards to keep its length, and a volume thinner than ``length`` is taken whole. The
    first slice wins a tie. An empty mask gives the whole volume.
    """
    depth = mask.shape[axis]
    areas = np.moveaxis(mask, axis, 0).reshape(depth, -1).sum(axis=1)
    if length >= depth or not areas.any():
        return slice(0, depth)
    start = min(max(int(np.argmax(areas)) - length // 2, 0), depth - length)
    return slice(start, start + length)


def score_label_maps(
    pred: np.ndarray,
    gt: np.ndarray,
    concepts: dict[int, str],
    dataset: str,
    image: str,
    protocol: str = "volume",
    slice_axis: int = 0,
) -> list[PairScore]:
    """Scores of every concept (label value → text) of two label maps on the same grid, by ``protocol``
    (:data:`PROTOCOLS`; ``window8`` crops each concept's pair to :func:`largest_area_window` along ``slice_axis``)."""
    if pred.shape != gt.shape:
        raise InputError(f"{image}: prediction shape {pred.shape} differs from ground truth {gt.shape}")
    if protocol not in PROTOCOLS:
        raise InputError(f"Unknown evaluation protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}.")
    out = []
    for value, text in concepts.items():
        p, g = pred == value, gt == value
        if protocol == "window8" and g.ndim == 3:
            window = [slice(None)] * 3
            window[slice_axis] = largest_area_window(g, slice_axis)
            p, g = p[tuple(window)], g[tuple(window)]
        out.append(PairScore(dataset, image, text, dice(p, g), iou(p, g), not g.any()))
    return out


def _predict_label_maps(
    detector: Detector,
    images: list[np.ndarray],
    concepts: dict[int, str],
    thresholds: Sequence[float],
    instances: str,
) -> list[list[np.ndarray]]:
    """Label maps (original grid, values of ``concepts``) for normalised slices ``images`` of one shape, one list
    per threshold of ``thresholds``.

    ``instances="top1"`` keeps each prompt's best instance (the paper); ``"all"`` every instance above the threshold
    (what volume inference paints), fused by their maximum probability and score. The network runs once: instances
    are resampled at the lowest threshold, and a higher threshold keeps those scoring at least as much — exactly
    what a run at that threshold alone would keep.
    """
    values = list(concepts)
    h, w = images[0].shape[:2]
    letterbox = detector.letterbox(h, w)
    vision = detector.encode_images(to_model_input(np.stack(images), letterbox, device=detector.bundle.device))
    dets = detector.detect(vision, detector.encode_text([concepts[v] for v in values]))
    lut = np.array([0, *values], dtype=np.int32)
    lowest = min(thresholds)
    maps: list[list[np.ndarray]] = [[] for _ in thresholds]
    for b in range(len(images)):
        found = [instances_for(dets, b, p, letterbox, lowest) for p in range(len(values))]
        for t, threshold in enumerate(thresholds):
            probs = np.zeros((len(values), h, w), np.float32)
            scores = np.zeros(len(values), np.float32)
            for p in range(len(values)):
                passing = [i for i in found[p] if i.score >= threshold]
                kept = passing if instances == "all" else passing[:1]  # instances_for sorts best first
                if kept:
                    probs[p] = np.max([i.probability for i in kept], axis=0)
                    scores[p] = max(i.score for i in kept)
            label_idx, _ = pixelwise_max_labelmap(probs, scores)
            maps[t].append(lut[label_idx])
    return maps


def evaluate_model(
    bundle: Sam3Bundle,
    datasets: Sequence,
    threshold: float = 0.5,
    max_images: int = 0,
    batch_size: int = 8,
    instances: str = "top1",
    shard: tuple[int, int] = (0, 1),
) -> list[PairScore]:
    """Run the protocol over :class:`~training.data.samples.PromptDataset`\\ s (their un-augmented slices).

    ``max_images`` > 0 takes an evenly spaced subset of each dataset (in-training validation stays cheap).
    ``shard = (rank, world_size)`` scores only every ``world_size``-th of those slices, from ``rank``.
    """
    return sweep_thresholds(bundle, datasets, [threshold], max_images, batch_size, instances, shard)[threshold]


@torch.no_grad()
def sweep_thresholds(
    bundle: Sam3Bundle,
    datasets: Sequence,
    thresholds: Sequence[float] = CALIBRATION_THRESHOLDS,
    max_images: int = 0,
    batch_size: int = 8,
    instances: str = "top1",
    shard: tuple[int, int] = (0, 1),
) -> dict[float, list[PairScore]]:
    """:func:`evaluate_model` at every threshold of ``thresholds`` from one pass of the network."""
    if not thresholds:
        raise ValueError("sweep_thresholds needs at least one threshold")
    thresholds = [float(t) for t in thresholds]
    rank, world = shard
    detector = Detector(bundle, max_batch=4 * batch_size)  # bounds memory: each pair holds its own FPN copy
    was_training = bundle.detector.training
    bundle.detector.eval()
    scores: dict[float, list[PairScore]] = {t: [] for t in thresholds}
    try:
        for ds in datasets:
            n = len(ds)
            picks = np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(int)) if max_images else range(n)
            groups: dict[tuple, list[int]] = defaultdict(list)  # batch slices of one shape and concept set
            for i in list(picks)[rank::world]:  # a DistributedSampler-style shard: every slice on exactly one rank
                ref = ds.slices[i]
                groups[(ds.cases[ref.case].dataset, ref.case)].append(int(i))
            for (name, case_i), idx in groups.items():
                concepts = ds.cases[case_i].concepts
                for start in range(0, len(idx), batch_size):
                    chunk = idx[start : start + batch_size]
                    loaded = [ds.load_slice(i) for i in chunk]
                    images = [img for img, _, _ in loaded]
                    per_threshold = _predict_label_maps(detector, images, concepts, thresholds, instances)
                    for t, preds in zip(thresholds, per_threshold):
                        for i, pred, (_, gt, case) in zip(chunk, preds, loaded):
                            ref = ds.slices[i]
                            scores[t] += score_label_maps(pred, gt, concepts, name, f"{case.case_id}#{ref.index}")
    finally:
        bundle.detector.train(was_training)
    return scores


def distributed_sweep(
    bundle: Sam3Bundle,
    datasets: Sequence,
    thresholds: Sequence[float],
    max_images: int = 0,
    instances: str = "top1",
) -> dict[float, list[Row]]:
    """:func:`sweep_thresholds` shared among the ranks of the process group, summarised: every rank scores its
    shard, the per-dataset sums are added up over ranks, and every rank returns the same rows — those a single
    process scoring every slice gets (up to float rounding). Without a process group it is the single process."""
    thresholds = [float(t) for t in thresholds]
    local = sweep_thresholds(bundle, datasets, thresholds, max_images, instances=instances,
                             shard=(dist.rank(), dist.world_size()))
    keyed = {(t, *key): v for t in thresholds for key, v in pair_totals(local[t]).items()}
    summed = dist.sum_arrays(keyed, _TOTAL_FIELDS)
    by_threshold: dict[float, dict] = {t: {} for t in thresholds}
    for (t, *key), v in summed.items():
        by_threshold[t][tuple(key)] = v
    return {t: rows_from_totals(by_threshold[t]) for t in thresholds}


def pick_threshold(rows_by_threshold: dict[float, Sequence[Row]]) -> tuple[float, dict[float, float]]:
    """The threshold whose rows have the highest selection score (:func:`dataset_means`), and every threshold's
    score. Ties go to the threshold nearest 0.5, the convention a model without calibration is run at."""
    selection = {t: dataset_means(rows).get("selection", 0.0) for t, rows in rows_by_threshold.items()}
    if not selection:
        raise ValueError("pick_threshold needs scores of at least one threshold")
    best = max(selection.values())
    tied = [t for t, v in selection.items() if v >= best - 1e-12]
    return min(tied, key=lambda t: (abs(t - 0.5), t)), selection


def calibrate_threshold(
    bundle: Sam3Bundle,
    datasets: Sequence,
    thresholds: Sequence[float] = CALIBRATION_THRESHOLDS,
    max_images: int = 0,
    instances: str = "top1",
) -> tuple[float, dict[float, float]]:
    """The score threshold that maximises the selection score of ``bundle`` on ``datasets`` (e.g. a training run's
    validation split), and the selection score at every threshold tried."""
    return pick_threshold(distributed_sweep(bundle, datasets, thresholds, max_images, instances))


def pair_totals(scores: Iterable[PairScore]) -> dict[tuple[str, str], np.ndarray]:
    """Per ``(dataset, concept)`` and ``(dataset, "all")``: float64 sums ``[pairs, Dice, IoU, pairs with non-empty
    ground truth, their Dice]`` — what :func:`rows_from_totals` averages. Sums, unlike means, add up across ranks."""
    totals: dict[tuple[str, str], np.ndarray] = defaultdict(lambda: np.zeros(_TOTAL_FIELDS, np.float64))
    for s in scores:
        item = np.array([1.0, s.dice, s.iou, 0.0 if s.gt_empty else 1.0, 0.0 if s.gt_empty else s.dice])
        totals[(s.dataset, s.concept)] += item
        totals[(s.dataset, "all")] += item
    return dict(totals)


def rows_from_totals(totals: dict[tuple[str, str], np.ndarray]) -> list[Row]:
    """Per dataset: one row per concept, then the dataset mean over all its pairs (``concept == "all"``)."""

    def row(key: tuple[str, str], t: np.ndarray) -> Row:
        n, n_present = int(round(t[0])), int(round(t[3]))
        present = float(t[4] / t[3]) if n_present else float("nan")
        return Row(key[0], key[1], n, float(t[1] / t[0]), float(t[2] / t[0]), n_present, present)

    keys = sorted((k for k in totals if totals[k][0] > 0), key=lambda k: (k[0], k[1] == "all", k[1]))
    return [row(k, totals[k]) for k in keys]


def summarize(scores: Iterable[PairScore]) -> list[Row]:
    """Per dataset: one row per concept, then the dataset mean over all its pairs (``concept == "all"``)."""
    return rows_from_totals(pair_totals(scores))


def dataset_means(rows: Sequence[Row]) -> dict[str, float]:
    """``{dataset: mean Dice}`` from :func:`summarize` rows, plus ``"mean"`` over datasets (the paper's average),
    ``"mean_present"`` (pairs with non-empty ground truth only) and ``"selection"``, their average.

    ``selection`` picks the best checkpoint: ``mean`` alone rewards a model that predicts nothing wherever most
    pairs are empty, ``mean_present`` alone one that paints everything; the average penalises both.
    """
    alls = [r for r in rows if r.concept == "all"]
    per = {r.dataset: r.dice for r in alls}
    if per:
        per["mean"] = float(np.mean([r.dice for r in alls]))
        present = [r.dice_present for r in alls if r.n_present]
        per["mean_present"] = float(np.mean(present)) if present else 0.0
        per["selection"] = (per["mean"] + per["mean_present"]) / 2
    return per


def format_table(rows: Sequence[Row]) -> str:
    head = f"{'dataset':<22} {'concept':<18} {'n':>6} {'Dice':>7} {'IoU':>7} {'n_present':>9} {'Dice_present':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.dataset:<22} {r.concept:<18} {r.n:>6} {r.dice:>7.3f} {r.iou:>7.3f} {r.n_present:>9} "
            f"{r.dice_present:>12.3f}"
        )
    means = dataset_means(rows)
    if means:
        blank = ""
        lines.append(
            f"{'mean over datasets':<41} {blank:>6} {means['mean']:>7.3f} {blank:>7} {blank:>9} "
            f"{means['mean_present']:>12.3f}"
        )
    return "\n".join(lines)


def write_report(rows: Sequence[Row], out_dir: Path) -> list[Path]:
    """``table.txt``, ``metrics.csv`` and ``dice.png`` (per-concept Dice bars grouped by dataset) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = out_dir / "table.txt"
    with atomic_path(table) as tmp:
        tmp.write_text(format_table(rows) + "\n", encoding="utf-8")
    csv_path = out_dir / "metrics.csv"
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["dataset", "concept", "n", "dice", "iou", "n_present", "dice_present"])
    for r in rows:
        writer.writerow(
            [r.dataset, r.concept, r.n, f"{r.dice:.4f}", f"{r.iou:.4f}", r.n_present, f"{r.dice_present:.4f}"]
        )
    with atomic_path(csv_path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    png = out_dir / "dice.png"
    _bar_plot(rows, png)
    return [table, csv_path, png]


def _bar_plot(rows: Sequence[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r.concept != "all"] or list(rows)
    labels = [f"{r.dataset}\n{r.concept}" for r in shown]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(shown) + 1.5), 3.8))
    x = np.arange(len(shown))
    ax.bar(x - 0.2, [r.dice for r in shown], 0.4, label="Dice")
    ax.bar(x + 0.2, [r.iou for r in shown], 0.4, label="IoU")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (empty ground truth counted)")
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def score_files(
    pred_dir: Path, gt_dir: Path, concepts: dict[int, str], dataset: str = "", protocol: str = "volume"
) -> list[PairScore]:
    """Score label-map files of ``pred_dir`` against same-named files of ``gt_dir`` (any format ``read_volume`` reads).

    A prediction folder written by ``medsam3 infer`` per case (``<case>/labels.nii.gz``) is matched by its folder
    name; otherwise file names must agree. ``window8`` windows along each ground truth's axial axis (from its
    direction matrix, as inference slices).
    """
    from medsam3_core.io.reading import read_volume

    from training.data.manifests import _stem

    gts = {_stem(p): p for p in sorted(Path(gt_dir).iterdir()) if p.is_file()}
    if not gts:
        raise InputError(f"{gt_dir} holds no ground-truth files")
    scores = []
    for name, gt_path in gts.items():
        candidates = [Path(pred_dir) / name, *Path(pred_dir).glob(f"{name}.*")]
        found = [c / "labels.nii.gz" if c.is_dir() else c for c in candidates if c.exists()]
        found = [f for f in found if f.is_file()]
        if not found:
            raise InputError(f"no prediction for {gt_path.name} in {pred_dir}")
        pred = np.rint(read_volume(found[0]).array).astype(np.int32)
        gt_volume = read_volume(gt_path)
        gt = np.rint(gt_volume.array).astype(np.int32)
        axis = 0 if gt.shape[0] == 1 else gt_volume.axis_for("axial")
        scores += score_label_maps(pred, gt, concepts, dataset or Path(gt_dir).name, name, protocol, axis)
    return scores


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model to evaluate (demo, a folder or a checkpoint file)")
    p.add_argument(
        "--data",
        action="append",
        default=[],
        help="dataset as kind:path[::name] (nnunet, folder2d, jsonl) or phantom|mni_brain:CASES[@SEED][::name]",
    )
    p.add_argument("--split", choices=["val", "all"], default="val", help="cases to score (default: the 15%% split)")
    p.add_argument("--pred", type=Path, help="folder of predicted label maps (scores files instead of a model)")
    p.add_argument("--gt", type=Path, help="folder of ground-truth label maps, same names as --pred")
    p.add_argument("--labels", type=Path, help='label→text JSON for --pred/--gt, e.g. {"1": "liver"}')
    p.add_argument("--protocol", nargs="+", choices=PROTOCOLS, default=["volume"],
                   help="3D scoring of --pred/--gt: volume (every slice, default) and/or window8 (the authors' 8 "
                        "slices centred on the largest ground-truth slice); several give one table row set each")
    p.add_argument("--threshold", type=float, default=None,
                   help="minimum detection score (default: the model's recommended threshold, 0.5 if it states none)")
    p.add_argument(
        "--instances",
        choices=["top1", "all"],
        default="top1",
        help="per prompt keep the best instance (paper protocol) or all above the threshold (volume inference)",
    )
    p.add_argument("--max-images", type=int, default=0, help="at most this many slices per dataset (0: all)")
    p.add_argument("--device", default="auto")
    p.add_argument("-o", "--out", type=Path, required=True, help="folder for table.txt, metrics.csv, dice.png")
    return p


def _run(args: argparse.Namespace) -> list[Row]:
    if args.pred or args.gt:
        if not (args.pred and args.gt and args.labels):
            raise InputError("--pred needs --gt and --labels")
        from training.data.manifests import read_label_to_text

        concepts = read_label_to_text(args.labels)
        scores = []
        for protocol in dict.fromkeys(args.protocol):
            name = args.gt.name if len(args.protocol) == 1 else f"{args.gt.name} [{protocol}]"
            scores += score_files(args.pred, args.gt, concepts, name, protocol)
        return summarize(scores)
    if not args.model or not args.data:
        raise InputError("give --model and at least one --data, or --pred/--gt/--labels")
    from medsam3_core.model.bundle import load_model

    from training.data.sources import datasets_for

    bundle = load_model(args.model, device=args.device)
    threshold = bundle.score_threshold if args.threshold is None else args.threshold
    print(f"score threshold {threshold:g}" + (" (the model's recommended one)" if args.threshold is None else ""))
    datasets = datasets_for(args.data, bundle.image_size, split=args.split)
    return summarize(evaluate_model(bundle, datasets, threshold, args.max_images, instances=args.instances))


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        rows = _run(args)
        files = write_report(rows, args.out)
    except MedSam3Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_table(rows))
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
