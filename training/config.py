"""Typed training configuration, the ``demo`` and ``paper`` presets, JSON files and ``key=value`` overrides.

A run is fully described by one :class:`TrainConfig`; it is saved next to the checkpoints (``config.json``) so a
resumed or evaluated run always knows what it was. Invalid values raise :class:`ConfigError` with a message that
names the field and the allowed range, instead of failing later inside PyTorch.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from medsam3_core.errors import InputError, MedSam3Error

from training.losses.criterion import LossConfig
from training.optim import OptimConfig

__all__ = [
    "ConfigError",
    "SourceConfig",
    "ModelConfig",
    "DataConfig",
    "EngineConfig",
    "TrainConfig",
    "PRESETS",
    "load_config",
    "parse_source",
    "apply_overrides",
]

SOURCE_KINDS = (
    "nnunet", "folder2d", "jsonl", "phantom", "mni_brain", "phantom_varied", "phantom_heldout", "brain_templates"
)
#: Source kinds generated rather than read from disk (``kind:CASES[@SEED]``).
SYNTHETIC_KINDS = ("phantom", "mni_brain", "phantom_varied", "phantom_heldout", "brain_templates")


class ConfigError(MedSam3Error):
    """A training configuration value is missing, of the wrong type, or out of range."""


@dataclass
class SourceConfig:
    """One dataset: ``kind`` is one of :data:`SOURCE_KINDS`; ``path`` is its folder/file (unused by synthetic kinds).

    ``cases`` is the number of synthetic cases to generate (``phantom``/``mni_brain``) from ``seed`` on (0: the
    source's default, so held-out sets can name other seeds); ``weight`` its share of
    samples under balanced sampling; ``modality`` overrides what the manifest says (``CT`` selects the CT window).
    """

    kind: str
    path: str = ""
    name: str = ""
    weight: float = 1.0
    modality: str = ""
    cases: int = 0
    seed: int = 0


@dataclass
class ModelConfig:
    """``init`` is ``tiny`` (random tiny SAM3 built from the fields below) or anything ``load_model`` accepts.

    ``tracker`` (tiny only) adds the memory tracker, untrained, so the export runs in track mode; it needs
    ``hidden`` > 64 (the tracker memory has 64 channels). ``image_size`` and the other size fields build the tiny
    model; a loaded model trains at its own image size (``config.json``: 504 for the Medical SAM3 3D release, 1008
    for SAM3).
    """

    init: str = "tiny"
    tracker: bool = True
    seed: int = 0
    image_size: int = 112
    patch_size: int = 14
    hidden: int = 128
    vit_hidden: int = 64
    vit_layers: int = 2
    text_hidden: int = 32
    num_queries: int = 20
    lora_rank: int = 0
    lora_alpha: float = 16.0


@dataclass
class DataConfig:
    sources: list[SourceConfig] = field(default_factory=list)
    val_fraction: float = 0.15
    split_seed: int = 42
    negative_prob: float = 0.2
    min_instance_pixels: int = 4
    augment: bool = True
    augment_preset: str = "default"  # training.data.augment.AUGMENT_PRESETS: default | robust
    batch_size: int = 8
    num_workers: int = 0
    val_max_images: int = 200


@dataclass
class EngineConfig:
    """The loop. With ``calibrate`` validation scores the detection score thresholds 0.05, 0.10, …, 0.95 from one
    network pass and keeps whichever gives the best selection score; the export states it as the model's
    recommended threshold (``training.evaluate``). Without, validation uses ``score_threshold``."""

    epochs: int = 10
    steps_per_epoch: int = 0
    max_steps: int = 0
    grad_accum: int = 1
    checkpoint_every: int = 500
    log_every: int = 20
    device: str = "auto"
    amp: bool = True
    grad_checkpointing: bool = False
    find_unused_parameters: bool = True
    seed: int = 42
    score_threshold: float = 0.5
    calibrate: bool = True
    eval_instances: str = "top1"
    threads: int = 0


@dataclass
class TrainConfig:
    name: str = "run"
    output_dir: str = "runs/run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return _build(cls, data, "config")

    def validate(self) -> "TrainConfig":
        """Raise :class:`ConfigError` on the first invalid value; returns ``self`` for chaining."""
        _check(bool(self.data.sources), "data.sources is empty: name at least one dataset (see training/README)")
        for i, s in enumerate(self.data.sources):
            _check(s.kind in SOURCE_KINDS, f"data.sources[{i}].kind {s.kind!r} is not one of {', '.join(SOURCE_KINDS)}")
            needs_path = s.kind in ("nnunet", "folder2d", "jsonl")
            _check(not needs_path or bool(s.path), f"data.sources[{i}] ({s.kind}) needs a path")
            _check(needs_path or s.cases > 0, f"data.sources[{i}] ({s.kind}) needs cases > 0")
            _check(s.weight > 0, f"data.sources[{i}].weight must be > 0, got {s.weight}")
        m, d, e, o = self.model, self.data, self.engine, self.optim
        _check(m.image_size % m.patch_size == 0, f"model.image_size {m.image_size} must be a multiple of patch_size")
        _check(
            not (m.init == "tiny" and m.tracker) or m.hidden > 64,
            f"model.hidden {m.hidden} must be > 64 with the tracker",
        )
        _check(m.hidden % 8 == 0, f"model.hidden {m.hidden} must be a multiple of 8 (GroupNorm(8, H) in SAM3)")
        _check(0.0 < d.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
        _check(0.0 <= d.negative_prob < 1.0, f"data.negative_prob must be in [0, 1), got {d.negative_prob}")
        _check(d.batch_size >= 1, f"data.batch_size must be ≥ 1, got {d.batch_size}")
        _check(d.augment_preset in ("default", "robust"),
               f"data.augment_preset must be default or robust, got {d.augment_preset!r}")
        _check(e.epochs >= 1, f"engine.epochs must be ≥ 1, got {e.epochs}")
        _check(e.grad_accum >= 1, f"engine.grad_accum must be ≥ 1, got {e.grad_accum}")
        _check(e.checkpoint_every >= 1, f"engine.checkpoint_every must be ≥ 1, got {e.checkpoint_every}")
        instances = e.eval_instances
        _check(instances in ("top1", "all"), f"engine.eval_instances must be top1 or all, not {instances!r}")
        _check(0.0 <= e.score_threshold <= 1.0, f"engine.score_threshold must be in [0, 1], got {e.score_threshold}")
        for k in ("lr_decoder", "lr_vision", "lr_text", "lr_geometry"):
            _check(getattr(o, k) > 0, f"optim.{k} must be > 0")
        _check(0.0 < o.llrd_gamma <= 1.0, f"optim.llrd_gamma must be in (0, 1], got {o.llrd_gamma}")
        _check(o.llrd_levels >= 1, f"optim.llrd_levels must be ≥ 1, got {o.llrd_levels}")
        return self


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _build(cls: type, data: Any, where: str) -> Any:
    """Dataclass ``cls`` from a plain dict, rejecting unknown keys (typos) with their location."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {where}; allowed: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        if name == "sources":
            kwargs[name] = [_build(SourceConfig, s, f"{where}.sources[{i}]") for i, s in enumerate(value)]
        elif dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(value, default, f"{where}.{name}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if default is None or isinstance(value, type(default)):
        return tuple(value) if isinstance(default, tuple) else value
    if isinstance(default, bool):
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    try:
        if isinstance(default, tuple):
            parts = value.split(",") if isinstance(value, str) else list(value)
            return tuple(type(d)(p) for d, p in zip(default, parts))
        return type(default)(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} must be a {type(default).__name__}, got {value!r}") from None


def _demo() -> TrainConfig:
    """CPU, tiny model, one thread: the recipe of the shipped demo model (training/DEMO_MODEL.md).

    One thread because the CPU is shared: with more threads than free cores PyTorch's workers spin and each step
    got ~3× slower in a measured run.

    Architecture: 112² input, patch 14 (8×8 tokens, 32×32 masks), ViT 128×4, H = 128 (the memory tracker needs
    H > 64), CLIP text 32 wide (the 49 408-token embedding dominates the file size), 20 queries. Learning rates
    are ~2–10× the paper's because the network starts from random weights, not from SAM3 (in trial runs 5e-4
    trained a model of this size stably; 1e-3 diverged for a 10 M model). Validation counts every instance
    above the threshold (``eval_instances="all"``), as volume inference paints them: "kidney" is two instances.
    Loss: Table 2's weights plus a mask-Dice matching cost (weight 5), because a random network's
    early boxes are noise. The tiny model is Xavier-initialised (training.engine.modelling) — with transformers'
    std-0.02 init no score depended on the prompt for 750 steps (DEMO_MODEL.md).
    """
    return TrainConfig(
        name="demo",
        output_dir="runs/demo",
        model=ModelConfig(init="tiny", image_size=112, patch_size=14, hidden=128, vit_hidden=128, vit_layers=4,
                          text_hidden=32, num_queries=20),
        data=DataConfig(
            sources=[SourceConfig(kind="phantom", name="abdomen-phantom", cases=40, modality="CT"),
                     SourceConfig(kind="mni_brain", name="mni152-brain", cases=12, modality="MR", weight=0.3)],
            negative_prob=0.2,
            batch_size=8,
            val_max_images=96,
        ),
        loss=LossConfig(match_mask=5.0),
        optim=OptimConfig(lr_decoder=5e-4, lr_vision=4e-4, lr_text=4e-4, lr_geometry=1e-4, llrd_gamma=0.85,
                          llrd_levels=4, weight_decay=1e-4, warmup_steps=150, grad_clip=1.0),
        engine=EngineConfig(epochs=20, steps_per_epoch=150, checkpoint_every=50, log_every=10, device="cpu",
                            amp=False, threads=1, eval_instances="all"),
    )


def _paper() -> TrainConfig:
    """The paper's recipe: full SAM3 at 1008², 4×H100 (4 processes × batch 4 here), up to 10 epochs."""
    return TrainConfig(
        name="paper",
        output_dir="runs/paper",
        model=ModelConfig(init="sam3", image_size=1008, patch_size=14),
        data=DataConfig(sources=[], batch_size=4, num_workers=8, negative_prob=0.2, val_max_images=100000),
        loss=LossConfig(),
        optim=OptimConfig(),
        engine=EngineConfig(epochs=10, checkpoint_every=1000, log_every=50, device="cuda", amp=True,
                            grad_checkpointing=True),
    )


def _demo_robust() -> TrainConfig:
    """The demo recipe for a model that survives unseen scans (training/README.md, *A robust demo model*).

    Phantoms at in-plane spacings 0.6–3.0 mm and slice thicknesses 1–5 mm (``phantom_varied``), every head nilearn
    ships offline in two contrasts (``brain_templates``), the ``robust`` augmentation (rotations ±30°, flips,
    stronger intensity jitter) and twice the steps of ``demo``, since the task is harder.
    """
    cfg = _demo()
    cfg.name, cfg.output_dir = "demo-robust", "runs/demo-robust"
    cfg.data.sources = [
        SourceConfig(kind="phantom_varied", name="abdomen-phantom", cases=48, modality="CT"),
        SourceConfig(kind="brain_templates", name="brain-templates", cases=16, modality="MR", weight=0.3),
    ]
    cfg.data.augment_preset = "robust"
    cfg.engine.epochs = 40
    return cfg


PRESETS = {"demo": _demo, "demo-robust": _demo_robust, "paper": _paper}


def load_config(name_or_path: Union[str, Path]) -> TrainConfig:
    """A preset by name (``demo``, ``paper``) or a JSON file written by :meth:`TrainConfig.to_dict`."""
    text = str(name_or_path)
    if text in PRESETS:
        return PRESETS[text]()
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"config {text!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    return TrainConfig.from_dict(data)


def apply_overrides(cfg: TrainConfig, overrides: list[str], sources: Optional[list[str]] = None) -> TrainConfig:
    """``section.key=value`` overrides (e.g. ``engine.max_steps=100``); ``sources`` (``kind:path[::name]``) replace
    the configured datasets."""
    data = cfg.to_dict()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. engine.max_steps=100")
        section, _, name = key.partition(".")
        if section == "run":  # top-level settings (name, output_dir)
            if name not in ("name", "output_dir"):
                raise ConfigError(f"override {item!r}: no such setting {key!r}")
            data[name] = value
            continue
        if section not in data or not isinstance(data[section], dict) or name not in data[section]:
            raise ConfigError(f"override {item!r}: no such setting {key!r}")
        data[section][name] = value
    if sources:
        data["data"]["sources"] = [asdict(parse_source(s)) for s in sources]
    return TrainConfig.from_dict(data)


def parse_source(text: str) -> SourceConfig:
    """``kind:path[::name]``; for synthetic kinds the path is ``CASES[@SEED]`` (e.g. ``phantom:20@9000``)."""
    kind, sep, rest = text.partition(":")
    if not sep or kind not in SOURCE_KINDS:
        raise InputError(f"data source {text!r} must look like kind:path with kind in {', '.join(SOURCE_KINDS)}")
    path, _, name = rest.partition("::")
    if kind in SYNTHETIC_KINDS:
        count, _, seed = path.partition("@")
        try:
            return SourceConfig(kind=kind, name=name or kind, cases=int(count), seed=int(seed or 0))
        except ValueError:
            raise InputError(f"data source {text!r}: synthetic kinds take CASES[@SEED], e.g. {kind}:20@9000") from None
    return SourceConfig(kind=kind, path=path, name=name or Path(path).name)
