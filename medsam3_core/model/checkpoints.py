"""Reading, recognising, instantiating and writing SAM3 weights — safely.

Weights reach us in four shapes: a transformers model folder (``config.json`` + safetensors), a bare safetensors
file, Meta's native ``sam3.pt`` and a Medical SAM3 trainer checkpoint
(``{"model": …, "optimizer": …, "epoch": …}``, ≈10 GB of which only the model part matters). This module reads
any of them into a flat ``{name: tensor}`` without ever unpickling code (safetensors, or
``torch.load(weights_only=True)``) and memory-maps where the format allows, so a 10 GB trainer file costs no more
RAM than the weights actually used. It also builds a transformers model from a
state dict and **refuses** when real layers would stay at random initialisation: a silently half-random SAM3 gives
plausible-looking but meaningless masks, which is worse than an error.

Key-name translation (native → transformers) lives in :mod:`medsam3_core.model.convert`; choosing what to load lives in
:mod:`medsam3_core.model.bundle`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Optional, Union

import torch
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase, Sam3Model, Sam3VideoModel
from transformers.utils import logging as hf_logging

from medsam3_core.model.card import write_card
from medsam3_core.errors import CheckpointError

__all__ = [
    "WEIGHT_SUFFIXES",
    "Layout",
    "RawWeights",
    "detect_layout",
    "strip_wrappers",
    "file_kind",
    "load_tensors_only",
    "unwrap_state_dict",
    "read_weights",
    "read_config",
    "model_class_for",
    "target_shapes",
    "instantiate",
    "load_folder",
    "check_loading_info",
    "quiet_transformers",
    "save_model",
]

log = logging.getLogger(__name__)

#: File suffixes recognised as single-file checkpoints.
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")

#: Top-level entries of a trainer checkpoint that hold the weights, in order of preference.
_MODEL_ENTRIES = ("model", "state_dict", "model_state_dict", "module")

#: How many key names an error message lists before "…".
_SHOW = 5


class Layout:
    """Names for the key layouts a state dict can have (plain strings, so they print well in reports)."""

    HF_VIDEO = "transformers Sam3VideoModel"  # detector_model.* / tracker_model.* / tracker_neck.*
    HF_DETECTOR = "transformers Sam3Model"  # vision_encoder.* / text_encoder.* / detr_decoder.* …
    NATIVE = "native SAM3"  # detector.* / tracker.* (Meta's sam3.pt and Medical SAM3 trainer checkpoints)


@dataclass
class RawWeights:
    """A checkpoint file read into memory (tensors memory-mapped where possible), names not yet translated.

    Attributes:
        state_dict: ``{name: tensor}`` exactly as stored (trainer wrappers and DDP ``module.`` prefixes removed).
        layout: one of :class:`Layout`.
        path: the file read.
        dropped: names of non-weight entries that were discarded (optimizer, epoch, loss …), for the report.
    """

    state_dict: dict[str, torch.Tensor]
    layout: str
    path: Path
    dropped: list[str] = field(default_factory=list)


#: Prefixes wrappers put before parameter names: ``DistributedDataParallel`` (``module.``) and peft
#: (``base_model.model.``), possibly both.
WRAPPER_PREFIXES = ("module.", "base_model.model.")


def strip_wrappers(name: str) -> str:
    """``name`` without any :data:`WRAPPER_PREFIXES`, however they are nested."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def _listing(names, limit: int = _SHOW) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" … (+{len(names) - limit} more)" if len(names) > limit else "")


def detect_layout(keys) -> str:
    """Which :class:`Layout` a set of parameter names follows; :class:`CheckpointError` when none fits."""
    keys = list(keys)
    heads = {k.split(".", 1)[0] for k in keys}
    if heads & {"detector_model", "tracker_model", "tracker_neck"}:
        return Layout.HF_VIDEO
    native_heads = ("backbone.vision_backbone.", "transformer.")
    if heads & {"detector", "tracker"} or any(k.startswith(native_heads) for k in keys):
        return Layout.NATIVE
    if heads & {"vision_encoder", "text_encoder", "detr_decoder", "detr_encoder", "mask_decoder"}:
        return Layout.HF_DETECTOR
    raise CheckpointError(
        f"The checkpoint's parameter names ({_listing(keys, 3)}) are neither SAM3's native nor transformers' layout; "
        "is this a SAM3 / Medical SAM3 checkpoint?"
    )


def _torch_load(path: Path) -> object:
    """``torch.load`` restricted to tensors and plain containers, memory-mapped when the file allows."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):  # legacy (non-zip) files cannot be memory-mapped: read them normally
            raise
    return torch.load(path, map_location="cpu", weights_only=True)


def file_kind(path: Path) -> str:
    """``"zip"`` (a ``torch.save`` file), ``"pickle"`` (legacy ``torch.save``), ``"safetensors"`` or ``"unknown"``,
    from the first bytes: a file that is none of these is not a checkpoint, whatever its name."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    return "unknown"


def _not_a_checkpoint(path: Path) -> CheckpointError:
    return CheckpointError(
        f"{path.name} is not a checkpoint: it is neither a PyTorch file nor safetensors (a download error page, or "
        "the wrong file?)."
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_tensors_only(path: Union[str, Path]) -> object:
    """Read a torch file allowing only tensors and plain containers; every failure is one clear line.

    Raises:
        CheckpointError: missing file, not a PyTorch file at all, truncated / corrupt, or holding Python objects
            besides tensors (which would need unpickling code, never done here).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    if file_kind(path) not in ("zip", "pickle"):
        raise _not_a_checkpoint(path)
    try:
        return _torch_load(path)
    except MemoryError as err:
        raise CheckpointError(f"Not enough memory to read {path.name}.") from err
    except Exception as err:  # torch raises many types (RuntimeError, UnpicklingError, EOFError …)
        if "Unsupported global" in str(err) or "Unsupported operand" in str(err):
            raise CheckpointError(
                f"Cannot read {path.name}: it contains Python objects besides tensors, and we never unpickle code; "
                "save it as a plain state dict of tensors (or safetensors)."
            ) from err
        reason = _first_line(err)
        if "weights_only" in reason:  # torch's generic preamble; the cause is on its last line
            reason = str(err).strip().splitlines()[-1].strip()
        raise CheckpointError(f"Cannot read checkpoint {path.name}: {reason[:200]}. Is the file complete?") from err


def unwrap_state_dict(obj: object, path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The weights inside a plain state dict or a trainer checkpoint, plus the names of what was dropped."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path.name} holds a {type(obj).__name__}, not a state dict or trainer checkpoint.")
    dropped: list[str] = []
    if not any(isinstance(v, torch.Tensor) for v in obj.values()):
        entry = next((k for k in _MODEL_ENTRIES if isinstance(obj.get(k), Mapping)), None)
        if entry is None:
            raise CheckpointError(
                f"{path.name} has no model weights (top-level entries: {_listing(map(str, obj.keys()))})."
            )
        dropped = [str(k) for k in obj if k != entry]
        obj = obj[entry]
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    dropped += [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if tensors and all(k.startswith("module.") for k in tensors):  # saved from a DDP-wrapped model
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    if not tensors:
        raise CheckpointError(f"{path.name} contains no tensors.")
    return tensors, dropped


def read_weights(path: Union[str, Path], check_layout: bool = True) -> RawWeights:
    """Read a single-file checkpoint (``.safetensors`` or a torch ``.pt``) without unpickling code.

    ``check_layout=False`` skips recognising the names as SAM3's (adapters name layers plus ``lora_A`` / ``lora_B``).

    Raises:
        CheckpointError: the file is missing, corrupt, not a checkpoint, or would need arbitrary unpickling.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint file not found: {path}")
    kind = file_kind(path)
    if kind == "unknown":
        raise _not_a_checkpoint(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            state, dropped = load_file(str(path), device="cpu"), []
        except Exception as err:  # safetensors raises its own SafetensorError and OSError
            raise CheckpointError(
                f"Cannot read checkpoint {path.name}: {_first_line(err)[:200]}. Is the file complete?"
            ) from err
    else:
        state, dropped = unwrap_state_dict(load_tensors_only(path), path)
    layout = detect_layout(state) if check_layout else "adapter"
    return RawWeights(state_dict=state, layout=layout, path=path, dropped=dropped)


def read_config(model_dir: Path) -> PretrainedConfig:
    """The ``config.json`` of a transformers model folder, as a ``Sam3VideoConfig`` or ``Sam3Config``."""
    from transformers import Sam3Config, Sam3VideoConfig

    path = Path(model_dir) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"Cannot read {path}: {err}") from err
    kinds = {"sam3_video": Sam3VideoConfig, "sam3": Sam3Config}
    kind = data.get("model_type")
    if kind not in kinds:
        raise CheckpointError(f"{path} describes a {kind!r} model; a SAM3 folder has model_type sam3_video or sam3.")
    data.pop("model_type")
    try:
        return kinds[kind](**data)
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path} is not a valid {kind} configuration: {err}") from err


def model_class_for(config: PretrainedConfig) -> type[PreTrainedModel]:
    """``Sam3VideoModel`` for a detector+tracker config, ``Sam3Model`` for a detector-only one."""
    return Sam3VideoModel if getattr(config, "model_type", "") == "sam3_video" else Sam3Model


def target_shapes(config: PretrainedConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter (and persistent buffer) of the transformers model for ``config``, with its shape.

    Built on the meta device: no memory, about a second even for full-size SAM3.
    """
    with torch.device("meta"):
        model = model_class_for(config)(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _shape_mismatches(config: PretrainedConfig, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    expected = target_shapes(config)
    return [
        f"{k} {tuple(v.shape)} vs {expected[k]}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' own progress bars and load reports; we report loading through our own channels."""
    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def check_loading_info(info: Mapping[str, object], source: str) -> list[str]:
    """Refuse a load that leaves parameters random or mis-shaped; return the ignored (unexpected) names.

    Raises:
        CheckpointError: some model parameters were absent from the checkpoint or had the wrong shape.
    """
    missing = set(info.get("missing_keys") or ())
    mismatched = {str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or ()}
    errors = list(info.get("error_msgs") or ())
    if mismatched or errors:
        raise CheckpointError(
            f"{source} does not fit this architecture: {len(mismatched)} parameter(s) have the wrong shape "
            f"({_listing(mismatched) or _listing(errors, 1)}). Was it made for another model size?"
        )
    if missing:
        raise CheckpointError(
            f"{source} lacks {len(missing)} parameter(s) the model needs ({_listing(missing)}); refusing to run "
            "with randomly initialised layers. Use a complete checkpoint (or convert it with 'medsam3 convert')."
        )
    unexpected = sorted(str(k) for k in info.get("unexpected_keys") or ())
    if unexpected:
        log.warning("%s: %d unused parameter(s) ignored: %s", source, len(unexpected), _listing(unexpected))
    return unexpected


def instantiate(
    config: PretrainedConfig, state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype, source: str
) -> PreTrainedModel:
    """Build the model for ``config`` directly from ``state_dict`` (meta-device init, no random weights first).

    ``state_dict`` must use transformers names for that class. Refuses (``CheckpointError``) when parameters are
    missing or mis-shaped.
    """
    cls = model_class_for(config)
    try:
        with quiet_transformers():
            model, info = cls.from_pretrained(
                None, config=config, state_dict=dict(state_dict), dtype=dtype, output_loading_info=True
            )
    except (RuntimeError, ValueError) as err:  # shape mismatches surface as RuntimeError
        wrong = _shape_mismatches(config, state_dict)
        detail = f"{len(wrong)} tensor(s) have the wrong shape ({_listing(wrong, 3)})" if wrong else str(err)
        raise CheckpointError(
            f"{source} does not fit this architecture: {detail.splitlines()[0][:400]}. "
            "Was it made for another model size? Put its config.json beside it."
        ) from err
    check_loading_info(info, source)
    return model.eval()


def load_folder(folder: Union[str, Path], dtype: torch.dtype) -> PreTrainedModel:
    """Load a transformers SAM3 folder (memory-mapped safetensors, never the hub); refuse incomplete weights."""
    folder = Path(folder)
    config = read_config(folder)
    try:
        with quiet_transformers():
            model, info = model_class_for(config).from_pretrained(
                str(folder), config=config, local_files_only=True, dtype=dtype, output_loading_info=True
            )
    except (OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"Cannot load the model in {folder}: {str(err).splitlines()[0][:300]}") from err
    check_loading_info(info, source=str(folder))
    return model.eval()


def _share_like_umask(folder: Path) -> None:
    """Give a finished folder the permissions a plain ``mkdir``/``open`` would have.

    ``mkdtemp`` (and transformers' own temporary files) are private (0700/0600); a model cache shared by a lab
    must stay readable by the group or everyone as the user's umask says.
    """
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move a finished folder over ``target``, keeping the old one until the new one is in place."""
    backup = None
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, backup)
    os.replace(tmp, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def save_model(
    model: PreTrainedModel,
    out_dir: Union[str, Path],
    tokenizer: Optional[PreTrainedTokenizerBase] = None,
    extra: Optional[Mapping[str, object]] = None,
) -> Path:
    """Write a weights-only transformers folder (``config.json`` + safetensors [+ tokenizer]) atomically.

    The folder is assembled beside ``out_dir`` and renamed into place only when complete, so an interrupted save
    never leaves a folder that half-loads. ``extra`` is written as the model card ``medsam3.json``
    (:mod:`medsam3_core.model.card`: conventions, provenance, conversion report …). Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        with quiet_transformers():
            model.save_pretrained(str(tmp), safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp))
        if extra:
            write_card(tmp, extra)  # checked as a model card first
        _share_like_umask(tmp)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir

