"""Building and holding the SAM3 networks (transformers' ``Sam3*`` classes) on a chosen device.

A :class:`Sam3Bundle` carries everything inference needs: the detector (``Sam3Model``), optionally the memory
tracker (``Sam3TrackerVideoModel`` plus the ``tracker_neck`` that turns the shared ViT output into tracker
features), the tokenizer, device and dtype. The detector and tracker share one ViT, as in ``Sam3VideoModel``: a
slice is encoded once and both heads read it.

``tiny_*_config`` (from :mod:`medsam3_core.model.tiny_config`) build small random-init configurations for tests, the
benchmarks and the CPU demo.

:func:`load_model` turns whatever the user names (``demo``, a release name such as ``medsam3-3d``, a transformers
folder, a native or Medical SAM3 ``.pt``, a safetensors file) into a bundle; reading and checking the files is
:mod:`medsam3_core.model.checkpoints`' job, native-name translation :mod:`medsam3_core.model.convert`'s.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Sam3Model,
    Sam3VideoConfig,
    Sam3VideoModel,
)

from medsam3_core.model import checkpoints
from medsam3_core.model.checkpoints import Layout, save_model
from medsam3_core.model.convert import config_for_checkpoint, native_to_transformers
from medsam3_core.model.download import RELEASES, not_downloaded_message, release_dir
from medsam3_core.errors import DeviceError, ModelError
from medsam3_core.progress import ProgressCallback, report
from medsam3_core.model.card import DEFAULT_SCORE_THRESHOLD, read_card
from medsam3_core.model.tokenizer import bundled_tokenizer, load_tokenizer
from medsam3_core.model.tiny_config import tiny_detector_config, tiny_video_config

__all__ = [
    "Sam3Bundle",
    "select_device",
    "tiny_detector_config",
    "tiny_video_config",
    "build_random_bundle",
    "random_video_model",
    "append_geometry_cls",
    "append_prompt_token",
    "geometry_cls_token",
    "DEMO_MODEL_DIR",
    "DEMO_RANDOM_SOURCE",
    "DEFAULT_SCORE_THRESHOLD",
    "resolve_model_spec",
    "load_model",
    "save_model",
]

log = logging.getLogger(__name__)

#: Where the bundled demo model (a ``Sam3VideoModel.save_pretrained`` folder) lives once it has been trained.
DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo_model"
#: ``Sam3Bundle.source`` of the stand-in used while no trained demo model ships.
DEMO_RANDOM_SOURCE = "untrained random demo model (masks are meaningless)"


@dataclass
class Sam3Bundle:
    """A ready-to-run SAM3: detector, optional tracker, tokenizer, device and dtype.

    Attributes:
        detector: ``Sam3Model`` in eval mode.
        tracker: ``Sam3TrackerVideoModel`` or ``None`` for detector-only checkpoints (2D releases).
        tracker_neck: the ``Sam3VideoModel.tracker_neck`` module (ViT → tracker FPN) or ``None``.
        tokenizer: CLIP tokenizer (bundled or the checkpoint's own).
        device, dtype: where and in which precision the networks run (CPU float32; CUDA bfloat16).
        image_size: the square input size the model was built for (1008 for real SAM3).
        source: a human-readable description of where the weights came from (shown in reports).
        keep_aspect: input convention the weights were trained with: ``True`` = aspect-preserving letterbox (our
            training stack), ``False`` = stretch to a square (Meta's SAM3 and Medical SAM3 pipelines).
        geometry_cls: append the geometry encoder's CLS token to text prompts, as Meta's SAM3 always does
            (:func:`append_geometry_cls`); ``False`` for models trained without it.
        score_threshold: the detection score threshold the model recommends (calibrated on its validation split
            by the training export, :mod:`medsam3_core.model.card`). Runs that name no threshold use it. 0.5 when the
            weights state none (Meta's SAM3): scores need not be centred on 0.5 (the small demo model's are not).
        recommended_mode, clip_length: the 3D mode the weights were trained for and, for ``clips``, the slices per
            clip (``medsam3.json`` ``conventions``; the Medical SAM3 3D release states ``clips`` of 4). Runs that name
            no mode use them.
        vocabulary: the concepts the model was trained on when its folder ships them (``vocabulary.txt``, one per
            line), else ``None``; prompts outside it get a warning (:mod:`medsam3_core.prompts`).
    """

    detector: Sam3Model
    tracker: Optional[torch.nn.Module]
    tracker_neck: Optional[torch.nn.Module]
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    image_size: int
    source: str
    keep_aspect: bool = True
    geometry_cls: bool = False
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    recommended_mode: str = "track"
    clip_length: int = 4
    vocabulary: Optional[list[str]] = None

    @property
    def has_tracker(self) -> bool:
        return self.tracker is not None and self.tracker_neck is not None

    def threshold(self, requested: Optional[float]) -> float:
        """The score threshold a run uses: ``requested``, or this model's recommended one when it is ``None`` (the 2D
        API's rule; volume runs settle it once in :func:`medsam3_core.plan.plan_run`, by the same rule)."""
        return self.score_threshold if requested is None else float(requested)


def select_device(name: str = "auto") -> tuple[torch.device, torch.dtype]:
    """Resolve ``auto``/``cpu``/``cuda``/``cuda:N`` to a device and its inference dtype.

    CUDA runs in bfloat16 with TF32 matmuls enabled; CPU runs in float32 (bf16 on CPU is slow and less accurate).
    """
    name = (name or "auto").lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                "CUDA was requested but no CUDA GPU is available to this PyTorch; choose the CPU device, or install "
                "a CUDA build of PyTorch.",
                field="device",
            )
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return torch.device(name), torch.bfloat16
    if name != "cpu":
        raise DeviceError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.", field="device")
    return torch.device("cpu"), torch.float32


def bundle_from_video_model(
    video: Sam3VideoModel, device: str = "auto", source: str = "", tokenizer: Optional[PreTrainedTokenizerBase] = None
) -> Sam3Bundle:
    """Move a ``Sam3VideoModel`` to the device/dtype and split it into a :class:`Sam3Bundle`."""
    dev, dtype = select_device(device)
    video = video.to(device=dev, dtype=dtype).eval()
    return Sam3Bundle(
        detector=video.detector_model,
        tracker=video.tracker_model,
        tracker_neck=video.tracker_neck,
        tokenizer=tokenizer or bundled_tokenizer(),
        device=dev,
        dtype=dtype,
        image_size=int(video.config.detector_config.vision_config.backbone_config.image_size),
        source=source,
    )


def build_random_bundle(seed: int = 0, device: str = "cpu", config: Optional[Sam3VideoConfig] = None) -> Sam3Bundle:
    """A random-init tiny detector+tracker: for tests and benchmarks only (its masks are meaningless)."""
    torch.manual_seed(seed)
    video = Sam3VideoModel(config or tiny_video_config())
    return bundle_from_video_model(video, device, source=f"random tiny SAM3 (seed {seed})")


def random_video_model(seed: int = 0, config: Optional[Sam3VideoConfig] = None) -> Sam3VideoModel:
    """A random-init ``Sam3VideoModel`` (tiny by default) shaped like a released one.

    transformers keeps the tracker's random-Fourier positional matrix twice (image and prompt encoder); Meta's
    checkpoints hold it once. Random init draws the two independently, so here they are made equal, as in every
    real checkpoint — then the model survives a round trip through Meta's format unchanged.
    """
    torch.manual_seed(seed)
    video = Sam3VideoModel(config or tiny_video_config()).eval()
    tracker = video.tracker_model
    with torch.no_grad():
        tracker.shared_image_embedding.positional_embedding.copy_(
            tracker.prompt_encoder.shared_embedding.positional_embedding
        )
    return video


def geometry_cls_token(detector: Sam3Model, vision_embeds) -> torch.Tensor:
    """The geometry encoder's CLS token for each image of ``vision_embeds``: ``(B, 1, H)``.

    It depends on the image only, not on the prompt, so callers that pair one image with several prompts compute it
    once per image and append it to each prompt with :func:`append_prompt_token`. Works without torchvision: with
    zero boxes the encoder's box pooling (``roi_align``) has nothing to do, so it is bypassed for this call.
    """
    encoder = detector.geometry_encoder
    features = vision_embeds.fpn_hidden_states[:-1]
    positions = vision_embeds.fpn_position_encoding[:-1]
    batch, device, dtype = features[-1].shape[0], features[-1].device, features[-1].dtype

    def no_boxes(boxes, mask, labels, vision_features):
        return boxes.new_zeros(*boxes.shape[:2], encoder.hidden_size), mask

    encoder._encode_boxes = no_boxes  # instance attribute shadows the method for this call only
    try:
        return encoder(
            box_embeddings=torch.zeros(batch, 0, 4, device=device, dtype=dtype),
            box_mask=torch.zeros(batch, 0, dtype=torch.bool, device=device),
            box_labels=torch.zeros(batch, 0, dtype=torch.long, device=device),
            img_feats=features,
            img_pos_embeds=positions,
        ).last_hidden_state
    finally:
        del encoder._encode_boxes


def append_geometry_cls(
    detector: Sam3Model, vision_embeds, text_embeds, attention_mask: torch.Tensor
) -> tuple[object, torch.Tensor]:
    """Text prompt features as Meta's SAM3 builds them: the text tokens plus the geometry encoder's CLS token.

    Meta's model always runs its geometry (box-prompt) encoder, even with no boxes, and appends the resulting CLS
    token to the prompt; transformers' ``Sam3Model`` skips the encoder when no boxes are given. The two then
    disagree by up to ~0.2 in presence logit and ~0.7 in mask logits (bench/fidelity/RESULTS.md); with this token
    appended they agree to ~1e-4. Pass the results as ``text_embeds=`` / ``attention_mask=`` to the forward.

    Args:
        detector: the ``Sam3Model``.
        vision_embeds: ``detector.get_vision_features(...)`` output for the image batch (batch 1 or = prompts).
        text_embeds: ``detector.get_text_features(..., return_dict=True)`` output, batch P.
        attention_mask: ``(P, L)`` text attention mask.

    Returns:
        ``(text_embeds, attention_mask)`` with one more (always valid) token: ``(P, L + 1, H)`` and ``(P, L + 1)``.
    """
    cls = geometry_cls_token(detector, vision_embeds)
    text = text_embeds.pooler_output
    combined = copy.copy(text_embeds)
    combined.pooler_output, mask = append_prompt_token(text, attention_mask, cls)
    return combined, mask


def append_prompt_token(
    prompt: torch.Tensor, mask: torch.Tensor, token: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt features ``(P, L, H)`` and their mask ``(P, L)`` with ``token`` (``(P, 1, H)``, or ``(1, 1, H)`` for
    all prompts) appended as one more, always valid, token."""
    token = token.expand(prompt.shape[0], -1, -1) if token.shape[0] == 1 else token
    prompt = torch.cat([prompt, token.to(prompt.dtype)], dim=1)
    return prompt, torch.cat([mask, mask.new_ones(mask.shape[0], token.shape[1])], dim=1)


def resolve_model_spec(spec: Union[str, Path, None], cache_dir: Union[str, Path, None] = None) -> Optional[Path]:
    """Turn a ``--model`` value into the file or folder to load, or ``None`` for the built-in random demo.

    ``demo`` (or empty) is the bundled demo model, or ``None`` while none ships; a release name (``sam3``,
    ``medsam3-2d``, ``medsam3-3d``) is its converted folder in the cache; anything else is a path.

    Raises:
        ModelError: a release that has not been downloaded, or a path that does not exist.
    """
    text = str(spec or "demo").strip()
    if text == "demo":
        return DEMO_MODEL_DIR if (DEMO_MODEL_DIR / "config.json").is_file() else None
    if text in RELEASES:
        folder = release_dir(text, cache_dir)
        if not (folder / "config.json").is_file():
            raise ModelError(not_downloaded_message(text, cache_dir))
        return folder
    path = Path(text).expanduser()
    if not path.exists():
        names = ", ".join(["demo", *RELEASES])
        raise ModelError(f"Model {text!r} not found: give a model folder, a checkpoint file, or one of: {names}.")
    return path


def _checkpoint_in_folder(folder: Path) -> Path:
    """The single checkpoint file of a folder that has no ``config.json`` (e.g. a hand-downloaded release)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(checkpoints.WEIGHT_SUFFIXES))
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "no checkpoint files"
        raise ModelError(
            f"{folder} is not a model folder (no config.json) and holds {found}; name one checkpoint "
            "file or convert it with 'medsam3 convert'."
        )
    return files[0]


def _load_file(path: Path, dtype: torch.dtype, config: Optional[PretrainedConfig]) -> PreTrainedModel:
    raw = checkpoints.read_weights(path)
    cfg = config_for_checkpoint(raw, config)
    state = raw.state_dict
    if raw.layout == Layout.NATIVE:
        conversion = native_to_transformers(state, cfg)
        if conversion.unmapped:
            log.warning("%s: %d native tensor(s) with no transformers counterpart ignored, e.g. %s", path.name,
                        len(conversion.unmapped), ", ".join(conversion.unmapped[:3]))
        state = conversion.state_dict
    return checkpoints.instantiate(cfg, state, dtype, source=path.name)


def _bundle(model: PreTrainedModel, device: str, source: str, tokenizer: PreTrainedTokenizerBase) -> Sam3Bundle:
    if isinstance(model, Sam3VideoModel):
        return bundle_from_video_model(model, device, source=source, tokenizer=tokenizer)
    dev, dtype = select_device(device)
    detector = model.to(device=dev, dtype=dtype).eval()
    return Sam3Bundle(
        detector=detector,
        tracker=None,
        tracker_neck=None,
        tokenizer=tokenizer,
        device=dev,
        dtype=dtype,
        image_size=int(detector.config.vision_config.backbone_config.image_size),
        source=source + " (image model only: the checkpoint has no tracker, so it runs in detect mode)",
    )


def load_model(
    spec: Union[str, Path, None] = "demo",
    device: str = "auto",
    config: Optional[PretrainedConfig] = None,
    cache_dir: Union[str, Path, None] = None,
    progress: Optional[ProgressCallback] = None,
) -> Sam3Bundle:
    """Load SAM3 weights from anything a user may name, ready to run on ``device``.

    Args:
        spec: ``demo``, a release name, a transformers folder, or a ``.pt`` / ``.safetensors`` file (native SAM3,
            Medical SAM3 trainer checkpoint, or transformers names).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (see :func:`select_device`); checked before any loading.
        config: architecture for single-file checkpoints that carry none (default: a ``config.json`` beside the
            file, else full-size SAM3).
        cache_dir: model cache for release names (default ``$MEDSAM3_HOME`` or ``~/.cache/medsam3``).
        progress: receives ``("load", fraction)``.

    Raises:
        ModelError: nothing found under that name. CheckpointError: unreadable or incomplete weights.
        DeviceError: the device is not available.
    """
    _, dtype = select_device(device)
    report(progress, "load", 0.0)
    path = resolve_model_spec(spec, cache_dir)
    if path is None:
        bundle = build_random_bundle(seed=0, device=device)
        bundle.source = DEMO_RANDOM_SOURCE
        report(progress, "load", 1.0)
        return bundle
    if path.is_dir() and not (path / "config.json").is_file():
        path = _checkpoint_in_folder(path)
    conventions = read_card(path).conventions  # before the weights: a bad model card fails at once
    if path.is_dir():
        model, tokenizer = checkpoints.load_folder(path, dtype), load_tokenizer(path)
        source = "demo model" if path == DEMO_MODEL_DIR else str(path)
        if str(spec) in RELEASES:
            source = f"{spec} ({path})"
    else:
        model, tokenizer = _load_file(path, dtype, config), load_tokenizer(path.parent)
        source = str(path)
    report(progress, "load", 0.9)
    bundle = _bundle(model, device, source, tokenizer)
    bundle.keep_aspect, bundle.geometry_cls = conventions.keep_aspect, conventions.geometry_cls
    bundle.score_threshold = conventions.score_threshold
    bundle.recommended_mode, bundle.clip_length = conventions.recommended_mode, conventions.clip_length
    bundle.vocabulary = read_vocabulary(path if path.is_dir() else path.parent)
    if not conventions.tracker_trained:  # random tracker weights would corrupt the fused masks
        bundle.tracker = bundle.tracker_neck = None
        bundle.source += " (its tracker is untrained: detection only)"
    report(progress, "load", 1.0)
    return bundle


#: Where a model folder lists the concepts it was trained on, one per line.
VOCABULARY_FILE = "vocabulary.txt"


def read_vocabulary(folder: Path) -> Optional[list[str]]:
    """The concepts listed in ``folder/vocabulary.txt`` (blank lines and ``#`` comments skipped), else ``None``."""
    path = Path(folder) / VOCABULARY_FILE
    if not path.is_file():
        return None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"Cannot read {path}: {err}; fix or remove it.") from err
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
