"""Merging a LoRA adapter into converted SAM3 weights, from either of the two shapes adapters travel in.

* a **PEFT folder** (``adapter_config.json`` + ``adapter_model.safetensors`` / ``.bin``), as our training stack and
  most fine-tuning scripts write it;
* a **raw state dict** in one ``.pt`` / ``.safetensors`` file, as trainers without PEFT write it (the Medical SAM3 3D
  release's 2D adapter, ~18 MB, is such a file). Its pairs ``<module>.lora_A[.<name>].weight`` /
  ``<module>.lora_B[.<name>].weight`` (also ``lora_down`` / ``lora_up``) are folded into ``<module>.weight`` as
  ``W + scaling · B @ A``, where ``<module>`` may be a native SAM3 name (``detector.…``, ``tracker.…`` or bare
  image-model names) or a transformers one. Native names go through the same rename / reshape table as full
  checkpoints, so a LoRA on Meta's fused ``attn.qkv`` lands on transformers' separate ``q/k/v`` projections.

The scaling is ``alpha / r``; ``r`` is the rank of ``lora_A``. ``alpha`` comes from the file when it states it (a
top-level ``lora_alpha`` / ``alpha`` / ``scaling``, or such a field in a ``config`` / ``lora_config`` / ``args`` entry),
else from ``--lora-alpha``, else it defaults to ``r`` (scaling 1), which the conversion report then says.

Both paths read the adapter's tensors without unpickling code: an adapter holding Python objects is refused with one
line, like any checkpoint. The merged model needs no ``peft`` at inference.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import torch
from transformers import PretrainedConfig, PreTrainedModel, Sam3VideoConfig

from medsam3_core.errors import CheckpointError
from medsam3_core.model import checkpoints
from medsam3_core.model.checkpoints import Layout

__all__ = ["LoraMerge", "merge_lora", "merge_raw_lora", "merge_peft_folder"]

log = logging.getLogger(__name__)

_PAIR = re.compile(
    r"(?P<module>.+?)\.(?P<side>lora_A|lora_B|lora_down|lora_up)(?:\.(?P<adapter>[A-Za-z0-9_]+))?\.weight"
)
_ALPHA_KEYS = ("lora_alpha", "alpha")
_CONFIG_ENTRIES = ("config", "lora_config", "args", "hparams")


@dataclass
class LoraMerge:
    """What a merge did, for ``medsam3.json``: the adapter, its format, layers changed, scaling and its origin."""

    adapter: str
    format: str
    layers: int
    scaling: Union[float, str]
    scaling_source: str
    copied: list[str] = field(default_factory=list)

    def report(self) -> dict[str, object]:
        return {"adapter": self.adapter, "format": self.format, "layers": self.layers, "scaling": self.scaling,
                "scaling_source": self.scaling_source, "copied": self.copied}


def _listing(names, limit: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f" … (+{len(names) - limit} more)" if len(names) > limit else "")


def _read_adapter_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Tensors and the non-tensor top-level entries (where alpha may be stated) of a raw adapter file."""
    if path.suffix == ".safetensors":
        return dict(checkpoints.read_weights(path, check_layout=False).state_dict), {}
    obj = checkpoints.load_tensors_only(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"LoRA adapter {path.name} holds a {type(obj).__name__}, not a state dict.")
    meta = {str(k): v for k, v in obj.items() if not isinstance(v, (torch.Tensor, Mapping)) or k in _CONFIG_ENTRIES}
    tensors, _ = checkpoints.unwrap_state_dict(obj, path)
    return tensors, meta


def _stated_alpha(meta: Mapping[str, object]) -> Optional[tuple[str, float]]:
    """``("alpha" | "scaling", value)`` when the adapter file states either, else ``None``."""
    places = [meta] + [meta[k] for k in _CONFIG_ENTRIES if isinstance(meta.get(k), Mapping)]
    for place in places:
        for key in _ALPHA_KEYS:
            if isinstance(place.get(key), (int, float)) and not isinstance(place.get(key), bool):
                return "alpha", float(place[key])
        if isinstance(place.get("scaling"), (int, float)) and not isinstance(place.get("scaling"), bool):
            return "scaling", float(place["scaling"])
    return None


def _deltas(
    tensors: Mapping[str, torch.Tensor], alpha: Optional[float], scaling: Optional[float]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], set[int]]:
    """``{module.weight: scaling · B @ A}``, the other (full) tensors, and the ranks seen."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    others: dict[str, torch.Tensor] = {}
    for key, tensor in tensors.items():
        name = checkpoints.strip_wrappers(key)
        match = _PAIR.fullmatch(name)
        if match is None:
            others[name] = tensor
            continue
        side = "A" if match["side"] in ("lora_A", "lora_down") else "B"
        pairs.setdefault(match["module"], {})[side] = tensor
    incomplete = [m for m, p in pairs.items() if len(p) != 2]
    if incomplete:
        raise CheckpointError(f"The LoRA adapter has unpaired lora_A / lora_B tensors for: {_listing(incomplete)}.")
    deltas, ranks = {}, set()
    for module, pair in pairs.items():
        a, b = pair["A"].float().flatten(1), pair["B"].float().flatten(1)
        if a.shape[0] != b.shape[1]:
            raise CheckpointError(f"LoRA pair {module} has rank {a.shape[0]} in lora_A but {b.shape[1]} in lora_B.")
        rank = int(a.shape[0])
        ranks.add(rank)
        factor = scaling if scaling is not None else (alpha if alpha is not None else rank) / rank
        deltas[module + ".weight"] = (b @ a) * factor
    return deltas, others, ranks


def _to_model_names(
    named: Mapping[str, torch.Tensor], config: PretrainedConfig, what: str
) -> dict[str, torch.Tensor]:
    """Rename native / transformers-video names to the converted model's own parameter names."""
    from medsam3_core.model.convert import native_to_transformers

    if not named:
        return {}
    layout = checkpoints.detect_layout(named)
    if layout == Layout.NATIVE:
        conversion = native_to_transformers(named, config)
        if conversion.unmapped:
            raise CheckpointError(
                f"The LoRA adapter's {what} names no known SAM3 layer: {_listing(conversion.unmapped)}."
            )
        return conversion.state_dict
    if layout == Layout.HF_VIDEO and not isinstance(config, Sam3VideoConfig):
        return {k[len("detector_model."):]: v for k, v in named.items() if k.startswith("detector_model.")}
    return dict(named)


def _apply(model: PreTrainedModel, deltas: Mapping[str, torch.Tensor], full: Mapping[str, torch.Tensor]) -> None:
    params = model.state_dict()
    unknown = [k for k in (*deltas, *full) if k not in params]
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(params[k].shape)}" for k, v in (*deltas.items(), *full.items())
             if k in params and tuple(v.shape) != tuple(params[k].shape)]
    if unknown or wrong:
        detail = (f"layers the model does not have ({_listing(unknown)})" if unknown
                  else f"wrong shapes ({_listing(wrong, 3)})")
        raise CheckpointError(f"The LoRA adapter does not fit this model: {detail}. Was it trained on this release?")
    with torch.no_grad():
        for name, delta in deltas.items():
            params[name].add_(delta.to(params[name].dtype))
        for name, tensor in full.items():
            params[name].copy_(tensor.to(params[name].dtype))


def merge_raw_lora(
    model: PreTrainedModel, path: Union[str, Path], alpha: Optional[float] = None
) -> tuple[PreTrainedModel, LoraMerge]:
    """Fold a raw LoRA state-dict file into ``model`` in place (module docstring).

    Raises:
        CheckpointError: unreadable or pickled file, no LoRA pairs, or pairs / tensors that fit no layer; the
            message lists what the file holds.
    """
    path = Path(path)
    tensors, meta = _read_adapter_file(path)
    stated = _stated_alpha(meta)
    if stated is not None:
        kind, value = stated
        source = "adapter file"
    elif alpha is not None:
        kind, value, source = "alpha", float(alpha), "--lora-alpha"
    else:
        kind, value, source = "alpha", None, "default (alpha = rank)"
    deltas, others, ranks = _deltas(tensors, value if kind == "alpha" else None, value if kind == "scaling" else None)
    if not deltas:
        raise CheckpointError(
            f"{path.name} is not a LoRA adapter this program knows: no '<layer>.lora_A.weight' / "
            f"'<layer>.lora_B.weight' pairs; it holds {len(tensors)} tensor(s) such as {_listing(tensors, 4)}."
        )
    full = {k: v for k, v in others.items() if not k.endswith(("lora_alpha", "scaling"))}
    config = model.config
    _apply(model, _to_model_names(deltas, config, "LoRA pairs"), _to_model_names(full, config, "extra tensors"))
    if kind == "scaling":
        scaling: Union[float, str] = value
    else:
        scaling = ", ".join(f"{(value if value is not None else r) / r:g} (rank {r})" for r in sorted(ranks))
    if value is None:
        log.warning("%s states no LoRA alpha: merged with scaling 1 (alpha = rank); pass --lora-alpha if it was "
                    "trained with another", path.name)
    return model, LoraMerge(str(path), "raw state dict", len(deltas), scaling, source, sorted(full))


def merge_peft_folder(model: PreTrainedModel, folder: Union[str, Path]) -> tuple[PreTrainedModel, LoraMerge]:
    """Fold a PEFT adapter folder into ``model``; its weights file is first read safely (no code unpickled)."""
    folder = Path(folder)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        found = ", ".join(sorted(p.name for p in folder.iterdir())[:6]) or "nothing"
        raise CheckpointError(
            f"{folder} is not a PEFT adapter folder (no adapter_config.json; it holds {found}); pass the adapter's "
            "folder, or its .pt / .safetensors file."
        )
    weights = [folder / n for n in ("adapter_model.safetensors", "adapter_model.bin") if (folder / n).is_file()]
    if not weights:
        raise CheckpointError(f"{folder} has adapter_config.json but no adapter_model.safetensors / .bin.")
    if weights[0].suffix == ".bin":
        checkpoints.load_tensors_only(weights[0])  # refuses pickled code before peft reads the file
    try:
        settings = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"Cannot read {config_file}: {err}") from err
    try:
        from peft import PeftModel
    except ImportError as err:
        raise CheckpointError(
            "Merging a PEFT adapter folder needs the 'peft' package: pip install 'medsam3[train]'."
        ) from err
    try:
        merged = PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    except Exception as err:  # peft raises many types for an adapter of another model (ValueError, KeyError …)
        reason = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"LoRA adapter {folder.name} does not fit this model: {reason}") from err
    alpha, rank = settings.get("lora_alpha"), settings.get("r")
    scaling = f"{alpha / rank:g}" if isinstance(alpha, (int, float)) and isinstance(rank, int) and rank else "peft"
    return merged, LoraMerge(str(folder), "PEFT folder", -1, scaling, "adapter_config.json")


def merge_lora(
    model: PreTrainedModel, adapter: Union[str, Path], alpha: Optional[float] = None
) -> tuple[PreTrainedModel, LoraMerge]:
    """Fold a LoRA adapter — a PEFT folder or a raw state-dict file — into ``model``'s weights."""
    adapter = Path(adapter)
    if adapter.is_dir():
        return merge_peft_folder(model, adapter)
    if adapter.is_file():
        return merge_raw_lora(model, adapter, alpha)
    raise CheckpointError(f"LoRA adapter not found: {adapter}")
