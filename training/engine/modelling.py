"""The network being trained: build or load it, enable activation checkpointing, export weights-only.

Training runs through ``Sam3Model`` (the detector). When the starting point is a detector+tracker model
(``Sam3VideoModel``: the tiny demo, SAM3, Medical SAM3 3D) the whole model is kept as ``root`` so the export is
again a complete detector+tracker folder that ``medsam3_core.model.bundle.load_model`` reads with the same loader; the
tracker weights are carried over unchanged (the transformers tracker runs under ``inference_mode`` and is not
trained here).

Weights loaded from a checkpoint keep the input conventions they were trained with (``Sam3Bundle.keep_aspect`` /
``geometry_cls``: Meta's SAM3 stretches images and appends the geometry encoder's CLS token to every prompt; our
exports state theirs). :class:`TrainModel` carries them, the training samples, the training forward
(:class:`PromptedForward`), validation and the export follow them, so fine-tuning never silently changes how a
model must be fed. A random tiny model is ours: letterbox, no CLS token.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel, Sam3Model, Sam3VideoConfig, Sam3VideoModel

from medsam3_core.model.checkpoints import read_config, save_model
from medsam3_core.model.bundle import (
    append_geometry_cls,
    load_model,
    resolve_model_spec,
    tiny_detector_config,
    tiny_video_config,
)

from training.config import ModelConfig

__all__ = [
    "TrainModel",
    "PromptedForward",
    "build_model",
    "enable_activation_checkpointing",
    "export_weights",
]


@dataclass
class TrainModel:
    """``root`` is what gets exported (``Sam3VideoModel`` or ``Sam3Model``); ``detector`` is what gets trained.

    ``keep_aspect`` and ``geometry_cls`` are the input conventions of the weights (see ``Sam3Bundle``): letterbox
    and no CLS token for a random tiny model, the loaded checkpoint's own otherwise.
    """

    root: PreTrainedModel
    detector: Sam3Model
    source: str
    keep_aspect: bool = True
    geometry_cls: bool = False

    @property
    def image_size(self) -> int:
        """The input size training samples are made at: the model's own (``config.json``), since the ViT is built
        for one size — 504 for the Medical SAM3 3D release, 1008 for SAM3, ``model.image_size`` for a tiny model."""
        return int(self.detector.config.vision_config.backbone_config.image_size)


class PromptedForward(torch.nn.Module):
    """The training forward ``(pixel_values, input_ids, attention_mask) → Sam3Model output`` in the prompt
    convention of the weights: with ``geometry_cls`` the text tokens are followed by the geometry encoder's CLS
    token, as Meta's SAM3 always builds a prompt (``medsam3_core.model.bundle.append_geometry_cls``); transformers' own
    forward with ``input_ids`` leaves it out.

    It owns ``trainable`` (the detector, or its peft wrapper) as a submodule, so ``DistributedDataParallel`` can
    wrap it and still synchronise every parameter's gradient.
    """

    def __init__(self, trainable: torch.nn.Module, geometry_cls: bool) -> None:
        super().__init__()
        self.trainable = trainable
        self.geometry_cls = geometry_cls

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        if not self.geometry_cls:
            return self.trainable(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
        # peft replaces layers in place, so the bare detector runs with the adapters too
        detector = self.trainable.get_base_model() if hasattr(self.trainable, "get_base_model") else self.trainable
        vision = detector.get_vision_features(pixel_values=pixel_values)
        text = detector.get_text_features(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        text, mask = append_geometry_cls(detector, vision, text, attention_mask)
        return detector(vision_embeds=vision, text_embeds=text, attention_mask=mask)


def build_model(cfg: ModelConfig) -> TrainModel:
    """A float32 CPU model: the tiny random architecture of ``cfg`` for ``init="tiny"``, else ``load_model(init)``
    with that checkpoint's input conventions."""
    if cfg.init == "tiny":
        det_cfg = tiny_detector_config(
            image_size=cfg.image_size,
            hidden=cfg.hidden,
            patch_size=cfg.patch_size,
            vit_hidden=cfg.vit_hidden,
            vit_layers=cfg.vit_layers,
            num_queries=cfg.num_queries,
            text_hidden=cfg.text_hidden,
        )
        torch.manual_seed(cfg.seed)
        source = f"random tiny SAM3 (seed {cfg.seed})"
        if not cfg.tracker:
            detector = Sam3Model(det_cfg)
            return TrainModel(_xavier(detector), detector, source)
        root = Sam3VideoModel(tiny_video_config(det_cfg))
        _xavier(root.detector_model)
        return TrainModel(root, root.detector_model, source)
    bundle = load_model(cfg.init, device="cpu")
    detector = bundle.detector.float()
    conventions = dict(keep_aspect=bundle.keep_aspect, geometry_cls=bundle.geometry_cls)
    if not bundle.has_tracker:
        return TrainModel(detector, detector, bundle.source, **conventions)
    # Reassemble the detector+tracker model around the loaded parts (no second copy of the weights), with the
    # folder's own configuration when there is one (it also holds video-level settings).
    path = resolve_model_spec(cfg.init)
    saved = read_config(path) if path is not None and (path / "config.json").is_file() else None
    video_cfg = saved if isinstance(saved, Sam3VideoConfig) else Sam3VideoConfig(
        detector_config=detector.config.to_dict(), tracker_config=bundle.tracker.config.to_dict()
    )
    with torch.device("meta"):
        root = Sam3VideoModel(video_cfg)
    root.detector_model = detector
    root.tracker_model = bundle.tracker.float()
    root.tracker_neck = bundle.tracker_neck.float()
    return TrainModel(root, detector, bundle.source, **conventions)


def _xavier(model: torch.nn.Module) -> torch.nn.Module:
    """Re-initialise every linear layer with Xavier-uniform weights and zero bias, in place.

    transformers initialises SAM3's linear layers with std 0.02, which suits its width 256–1024 (and is overwritten
    by pretrained weights anyway). In a 32–128-wide random model that scale makes each attention block's output
    ~100× smaller than its residual stream: at initialisation the presence token varied by 0.08 % between
    different images and prompts, and training sat on a plateau where no score depended on the prompt. Xavier
    scaling keeps the signal at the size of its input.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    return model


def enable_activation_checkpointing(detector: Sam3Model) -> int:
    """Recompute each ViT block in the backward pass instead of storing its activations; returns the block count.

    transformers refuses ``gradient_checkpointing_enable()`` for Sam3 (its model class does not declare support), but
    its ViT blocks are ``GradientCheckpointingLayer``s, which honour the per-layer switch set here.
    """
    layers = detector.vision_encoder.backbone.layers
    for layer in layers:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = functools.partial(checkpoint, use_reentrant=False)
    return len(layers)


def export_weights(
    model: TrainModel, out_dir: Union[str, Path], dtype: torch.dtype = torch.float16, extra: Optional[dict] = None
) -> Path:
    """A weights-only transformers folder (``config.json`` + safetensors), written atomically, in ``dtype``.

    A float16 copy of the demo model is ≈ half the size; ``load_model`` casts to the run dtype when loading.
    The live model is left untouched: the folder is written from a copy (a skeleton built on the meta device that
    takes CPU copies of the tensors). Casting the live model and back would give its parameters new storage of
    another dtype, which detaches the gradient hooks ``DistributedDataParallel`` relies on — rank 0 then never
    reduces those gradients after an export in mid-training, and every rank waits forever.
    """
    root = model.root
    with torch.device("meta"):
        clone = type(root)(root.config)
    state = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype) for k, v in root.state_dict().items()}
    clone.load_state_dict(state, assign=True)
    for name, buffer in root.named_buffers():  # non-persistent buffers (e.g. rotary frequencies) are not in state
        if name not in state:
            owner, _, attr = name.rpartition(".")
            clone.get_submodule(owner).register_buffer(attr, buffer.detach().to("cpu"), persistent=False)
    return save_model(clone, out_dir, extra=extra)
