"""Train SAM3's memory tracker on short slice clips, with the detector frozen.

    python -m training.tracker.train --model demo --out runs/tracker --steps 3000

Each step takes one clip (:mod:`training.tracker.clips`: ``T`` consecutive slices, objects present on the first) and
does what the volume engine does in track mode, with gradients: the detector's ViT encodes the slices (frozen, under
``no_grad``), :class:`~medsam3_core.engine.tracker.MemoryTracker` seeds every object from its ground-truth mask on the
first slice, then propagates it slice by slice and remembers its own prediction (teacher-free, as at inference; with
probability ``--gt-memory`` the ground truth is remembered instead, as when a detection corrects the tracker). The
same tracker code runs at inference, so what is trained is exactly what is used.

Loss: :mod:`training.losses.tracker` (SAM2's recipe, weights in :class:`~training.losses.criterion.LossConfig`).

Trained: every tracker parameter (memory attention, memory encoder, SAM prompt encoder and mask decoder, object
pointer projection, temporal encodings) and ``tracker_neck``; nothing of the detector changes, so the export keeps
its detector weights bit for bit. The tracker runs in eval mode (no dropout): the padded-memory key mask of the
batched tracker and transformers' RoPE key dropout do not mix, and inference runs it the same way.

Loading: ``medsam3_core.model.bundle.load_model`` drops a tracker whose ``medsam3.json`` says ``tracker_trained: false``
(random weights would spoil inference); this module reads the folder's ``Sam3VideoModel`` itself to get it back.
The export is a weights-only float16 folder (like the demo model) whose ``medsam3.json`` keeps the source's keys,
with ``conventions.tracker_trained: true`` and a ``tracker_training`` record.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Sam3VideoModel

from medsam3_core.model import checkpoints
from medsam3_core.io.atomic import atomic_path
from medsam3_core.errors import ModelError
from medsam3_core.metrics import dice as mask_dice
from medsam3_core.model.card import ModelCard, read_card, update_card
from medsam3_core.model.bundle import DEMO_MODEL_DIR, Sam3Bundle, load_model, resolve_model_spec
from medsam3_core.engine.tracker import MemoryTracker

from training.tracker.clips import DEFAULT_LENGTH, ClipDataset, ClipSampler, clip_datasets
from training.config import load_config
from training.losses.tracker import clip_loss
from training.engine.modelling import TrainModel, _xavier, export_weights
from training.optim import lr_factor

__all__ = [
    "TrackerTrainConfig",
    "load_video_bundle",
    "tracker_parameters",
    "freeze_detector",
    "reinit_xavier",
    "evaluate_clips",
    "train_tracker",
    "install_demo_tracker",
    "main",
]


# -- model ---------------------------------------------------------------------------------------------------------
def load_video_bundle(spec: str, device: str = "cpu") -> tuple[Sam3VideoModel, Sam3Bundle]:
    """The whole float32 ``Sam3VideoModel`` of a model folder and a bundle over its parts, *with* its tracker.

    The bundle takes the folder's input conventions, tokenizer and source from :func:`load_model`; its detector,
    tracker and neck are the video model's own modules, so training them trains what gets saved.
    """
    path = resolve_model_spec(spec)
    if path is None or not (path / "config.json").is_file():
        raise ModelError(f"{spec!r}: tracker training needs a model folder (config.json + safetensors) with a tracker")
    video = checkpoints.load_folder(path, torch.float32)
    if not isinstance(video, Sam3VideoModel):
        raise ModelError(f"{path} holds a detector only ({type(video).__name__}); there is no tracker to train")
    bundle = load_model(str(path), device=device)
    video = video.to(bundle.device)
    bundle.detector, bundle.tracker, bundle.tracker_neck = video.detector_model, video.tracker_model, video.tracker_neck
    bundle.dtype = torch.float32
    return video, bundle


def tracker_parameters(bundle: Sam3Bundle) -> list[torch.nn.Parameter]:
    """What tracker training updates: every parameter of the tracker and of ``tracker_neck``."""
    return [*bundle.tracker.parameters(), *bundle.tracker_neck.parameters()]


def reinit_xavier(module: torch.nn.Module) -> torch.nn.Module:
    """Xavier-uniform weights and zero biases for every linear *and convolution* layer of ``module``, in place.

    The detector's lesson (DEMO_MODEL.md: transformers' std-0.02 init starves a 128-wide network) holds for the
    tracker too, and its memory path is mostly convolutions (mask downsampler, memory encoder, neck). With the
    linear layers alone re-initialised, two objects seeded on one slice got conditioned features that differed by
    0.7 % at initialisation; with the convolutions too, by 7.5 %. The tracker has to learn to tell its objects
    apart through that difference.
    """
    _xavier(module)
    for layer in module.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            torch.nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                torch.nn.init.zeros_(layer.bias)
    return module


def freeze_detector(bundle: Sam3Bundle) -> None:
    """Detector frozen; tracker and neck trainable, all in eval mode (module docstring)."""
    bundle.detector.requires_grad_(False)
    bundle.detector.eval()
    bundle.tracker.eval()
    bundle.tracker_neck.eval()
    for p in tracker_parameters(bundle):
        p.requires_grad_(True)


# -- validation ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_clips(bundle: Sam3Bundle, datasets: Sequence[ClipDataset], max_clips: int = 64, memory_size: int = 0
                   ) -> dict[str, float]:
    """Teacher-free propagation on (up to ``max_clips`` evenly spaced) clips of each dataset.

    Returns per dataset and overall: ``dice`` mean Dice of the tracker's mask where the object is present (absent
    prediction = empty mask), ``presence`` accuracy of ``score > 0`` on every propagated (object, slice),
    ``absent`` that accuracy on the pairs where the object has left (NaN without any: has the object score learned
    "absent"?), and ``copy_dice`` the Dice of simply copying the seed mask forward (what a tracker must beat).
    """
    out: dict[str, float] = {}
    totals = {"dice": [], "presence": [], "absent": [], "copy_dice": []}
    for dataset in datasets:
        picks = np.linspace(0, len(dataset) - 1, num=min(max_clips, len(dataset))).round().astype(int)
        dice, presence, absent, copy = [], [], [], []
        for i in picks:
            clip = dataset.clip(int(i))
            tracker = MemoryTracker(bundle, memory_size or int(bundle.tracker.num_maskmem), clip.num_slices)
            vision = bundle.detector.get_vision_features(pixel_values=clip.pixels.to(bundle.device))
            feats = tracker.features(vision)
            gt = clip.masks.to(bundle.device)
            memories = tracker.seed(feats[0], gt[:, 0], 0)
            for t in range(1, gt.shape[1]):
                step = tracker.propagate(feats[t], memories, t)
                pred = F.interpolate(step.mask_logits[:, None].float(), size=gt.shape[-2:], mode="bilinear",
                                     align_corners=False)[:, 0] > 0
                here = gt[:, t].flatten(1).any(1)
                seen = step.score_logits > 0
                pred = pred & seen[:, None, None]
                presence += (seen == here).float().tolist()
                absent += (~seen[~here]).float().tolist()
                for n in torch.nonzero(here).flatten().tolist():
                    dice.append(mask_dice(pred[n].cpu().numpy(), gt[n, t].cpu().numpy()))
                    copy.append(mask_dice(gt[n, 0].cpu().numpy(), gt[n, t].cpu().numpy()))
                tracker.remember(feats[t], memories, t, step.mask_logits, seen, step.pointers)
        name = dataset.name
        out[f"{name}/dice"], out[f"{name}/presence"] = float(np.mean(dice)), float(np.mean(presence))
        out[f"{name}/absent"] = float(np.mean(absent)) if absent else float("nan")
        out[f"{name}/copy_dice"] = float(np.mean(copy))
        for key in totals:
            totals[key].append(out[f"{name}/{key}"])
    out.update({k: float(np.nanmean(v)) for k, v in totals.items() if v and not np.isnan(v).all()})
    return out


# -- training loop -------------------------------------------------------------------------------------------------
@dataclass
class TrackerTrainConfig:
    model: str = "demo"
    out: str = "runs/tracker"
    data: str = "demo"  # a training config (preset or JSON) whose data.sources and split are used
    steps: int = 2000
    clip_length: int = DEFAULT_LENGTH
    leave_prob: float = 0.5
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 100
    grad_clip: float = 1.0
    gt_memory: float = 0.2
    reinit: str = "auto"  # xavier | none | auto (xavier when the source says its tracker is untrained)
    seed: int = 0
    eval_every: int = 250
    eval_clips: int = 48
    log_every: int = 25
    max_minutes: float = 0.0
    threads: int = 1


def _export(video: Sam3VideoModel, bundle: Sam3Bundle, out: Path, card: ModelCard, record: dict) -> Path:
    card = card.with_conventions(tracker_trained=True).with_records(tracker_training=record)
    return export_weights(TrainModel(video, bundle.detector, bundle.source), out, torch.float16, extra=card.to_dict())


def train_tracker(cfg: TrackerTrainConfig, log=print) -> dict:
    """Train the tracker of ``cfg.model`` on clips of ``cfg.data``'s training split; exports ``<out>/final`` and
    ``<out>/best`` (highest validation clip Dice). Returns the history (losses, validation)."""
    torch.set_num_threads(max(cfg.threads, 1))
    torch.manual_seed(cfg.seed)
    path = resolve_model_spec(cfg.model)
    video, bundle = load_video_bundle(cfg.model, device="cpu")
    card = read_card(path)
    untrained = not card.conventions.tracker_trained
    reinit = cfg.reinit == "xavier" or (cfg.reinit == "auto" and untrained)
    if reinit:
        reinit_xavier(bundle.tracker)
        reinit_xavier(bundle.tracker_neck)
    freeze_detector(bundle)
    data_cfg = load_config(cfg.data).data
    train_sets, val_sets, weights = clip_datasets(data_cfg, bundle.image_size, cfg.clip_length, bundle.keep_aspect)
    sampler = ClipSampler(train_sets, weights, seed=cfg.seed, leave_prob=cfg.leave_prob)
    log(f"clips: train {[(d.name, len(d)) for d in train_sets]}, val {[(d.name, len(d)) for d in val_sets]}; "
        f"reinit {'xavier' if reinit else 'none'}")
    params = tracker_parameters(bundle)
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"trained_by": "training.tracker.train", "settings": asdict(cfg)}
    history: dict = {"loss": [], "val": []}
    best = -1.0
    start = time.monotonic()
    window: list[dict] = []

    def validate(step: int) -> None:
        nonlocal best
        result = evaluate_clips(bundle, val_sets, cfg.eval_clips)
        history["val"].append({"step": step, **result})
        log(f"step {step}: val " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
        if result.get("dice", 0.0) > best:
            best = result["dice"]
            _export(video, bundle, out / "best", card, {**record, "step": step, "validation": result})

    validate(0)
    step = 0
    for step in range(1, cfg.steps + 1):
        rng = np.random.default_rng((cfg.seed, 1, step))
        clip = sampler(step)
        loss, stats = clip_loss(None, bundle, clip, rng, cfg.gt_memory)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        sched.step()
        window.append(stats)
        if step % cfg.log_every == 0:
            mean = {k: float(np.mean([s[k] for s in window])) for k in window[0]}
            history["loss"].append({"step": step, **mean})
            elapsed = time.monotonic() - start
            log(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()) + f" ({elapsed / 60:.1f} min)")
            window = []
        out_of_time = cfg.max_minutes > 0 and time.monotonic() - start > 60 * cfg.max_minutes
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            validate(step)
        if out_of_time:
            log(f"time budget of {cfg.max_minutes:g} min reached at step {step}")
            break
    _export(video, bundle, out / "final", card, {**record, "step": step})
    (out / "history.json").write_text(json.dumps(history, indent=1), encoding="utf-8")
    return history


# -- installing into the demo model --------------------------------------------------------------------------------
def install_demo_tracker(model_dir: Path, target: Path = DEMO_MODEL_DIR, provenance: Optional[dict] = None) -> Path:
    """Put a tracker-trained export of the demo model in place of the bundled one.

    Refuses unless every detector tensor is bit-identical to the installed model's. The installed ``medsam3.json``
    is re-read right before writing and only ``conventions.tracker_trained`` and the ``tracker_training`` record
    change (other keys, written by other tools, are kept).
    """
    from safetensors.torch import load_file

    new = load_file(str(model_dir / "model.safetensors"))
    old = load_file(str(target / "model.safetensors"))
    tracker_prefixes = ("tracker_model.", "tracker_neck.")
    if set(new) != set(old):
        raise ModelError("the export and the installed demo model hold different tensors")
    changed = [k for k in old if not k.startswith(tracker_prefixes) and not torch.equal(old[k], new[k])]
    if changed:
        raise ModelError(f"detector weights differ from the installed demo model: {changed[:3]}")
    record = provenance or read_card(model_dir).other.get("tracker_training", {})
    for name in ("model.safetensors", "config.json"):
        with atomic_path(target / name) as tmp:
            tmp.write_bytes((model_dir / name).read_bytes())
            tmp.chmod(0o644)  # a temporary file is private; the package's copy must stay readable by everyone
    update_card(target, {"tracker_trained": True}, tracker_training=record)
    return target


def main(argv: Optional[list[str]] = None) -> int:
    defaults = TrackerTrainConfig()
    p = argparse.ArgumentParser(prog="python -m training.tracker.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=defaults.model, help="model folder with a tracker, or 'demo' (default)")
    p.add_argument("--out", default=defaults.out, help="output folder: best/, final/, history.json")
    p.add_argument("--data", default=defaults.data,
                   help="training config (preset or JSON) whose data sources and 85/15 split give the clips")
    for name in ("steps", "clip_length", "warmup", "seed", "eval_every", "eval_clips", "log_every", "threads"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    for name in ("lr", "weight_decay", "grad_clip", "gt_memory", "leave_prob", "max_minutes"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(defaults, name))
    p.add_argument("--reinit", choices=("auto", "xavier", "none"), default=defaults.reinit,
                   help="re-initialise the tracker's linear layers (auto: when the source's tracker is untrained)")
    args = p.parse_args(argv)
    cfg = TrackerTrainConfig(**vars(args))
    train_tracker(cfg, log=lambda m: print(m, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
