"""Training checkpoints: everything needed to resume bit-for-bit, written atomically, read without unpickling code.

``last.pt`` (every ``checkpoint_every`` optimiser steps, at each epoch end and when a step budget stops the run)
holds model and optimiser state, the scheduler, the step/epoch/sampler position, the best validation score and the
torch RNG states. It is for resuming only; models for use are exported separately as weights-only folders
(:func:`training.engine.modelling.export_weights`). Files are loaded with ``torch.load(weights_only=True)``: a
checkpoint can never execute code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from medsam3_core.io.atomic import atomic_path
from medsam3_core.errors import CheckpointError

__all__ = ["TrainState", "save_checkpoint", "load_checkpoint", "capture_rng", "restore_rng", "architecture_changes"]

# Model settings that decide the network's parameters (``training.config.ModelConfig``); the tiny model's sizes count
# only when it is the init. ``seed`` does not: it only draws the initial weights, which a resume replaces.
_ARCHITECTURE_KEYS = ("init", "image_size", "tracker", "lora_rank", "lora_alpha")
_TINY_KEYS = ("patch_size", "hidden", "vit_hidden", "vit_layers", "text_hidden", "num_queries")


class TrainState(dict):
    """A plain dict with the keys ``step``, ``epoch``, ``position`` (samples consumed this epoch on this rank),
    ``world_size`` and ``best`` (best validation selection score, :func:`training.evaluate.dataset_means`)."""

    @classmethod
    def fresh(cls) -> "TrainState":
        return cls(step=0, epoch=0, position=0, best=-1.0)


def capture_rng() -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    config: dict,
) -> Path:
    """Write ``path`` atomically (a crash mid-write leaves the previous checkpoint intact)."""
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "state": dict(state),
        "rng": capture_rng(),
        "config": config,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def architecture_changes(saved: dict, current: dict) -> list[str]:
    """``model.KEY=saved (now current)`` for every architecture setting that differs between two config dicts."""
    saved_model, model = saved.get("model", {}), current.get("model", {})
    keys = _ARCHITECTURE_KEYS + (_TINY_KEYS if model.get("init") == "tiny" else ())
    return [f"model.{k}={saved_model[k]!r} (now {model.get(k)!r})"
            for k in keys if k in saved_model and saved_model[k] != model.get(k)]


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: Optional[torch.optim.Optimizer] = None,
    scheduler: Any = None,
    config: Optional[dict] = None,
) -> TrainState:
    """Restore ``model`` (and optimiser/scheduler/RNG when given) from ``path``; returns its :class:`TrainState`.

    With ``config`` (the run's settings as a dict) a checkpoint written with other architecture settings is refused
    in one line naming them, instead of failing deep inside ``load_state_dict``.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"cannot read training checkpoint {path}: {str(err).splitlines()[0][:200]}") from err
    missing = {"model", "state"} - set(payload)
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint (missing {', '.join(sorted(missing))})")
    changes = architecture_changes(payload.get("config") or {}, config) if config is not None else []
    if changes:
        raise CheckpointError(
            f"{path} was written with other model settings: {', '.join(changes)}; resume with the settings it was "
            "written with, or train into a new --output-dir"
        )
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit this model ({str(err).splitlines()[0][:200]}); "
                              "train into a new --output-dir") from None
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(payload["scheduler"])
    if optimizer is not None and "rng" in payload:
        restore_rng(payload["rng"])
    return TrainState(payload["state"])
