"""Building and holding the SAM3 networks (transformers' ``Sam3*`` classes) on a chosen device.

A :class:`Sam3Bundle` carries everything inference needs: the detector (``Sam3Model``), optionally the memory
tracker (``Sam3TrackerVideoModel`` plus the ``tracker_neck`` that turns the shared ViT output into tracker
features), the tokenizer, device and dtype. The detector and tracker share one ViT, as in ``Sam3VideoModel``: a
slice is encoded once and both heads read it.

``tiny_*_config`` build small random-init configurations for tests and the CPU demo (facts and constraints in
SAM3_NOTES §2 and §4: H must be a multiple of 8 and larger than the tracker's 64-channel memory).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from transformers import PreTrainedTokenizerBase, Sam3Config, Sam3Model, Sam3VideoConfig, Sam3VideoModel

from .errors import DeviceError
from .tokenizer import bundled_tokenizer

__all__ = [
    "Sam3Bundle",
    "select_device",
    "tiny_detector_config",
    "tiny_video_config",
    "build_random_bundle",
]


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
    """

    detector: Sam3Model
    tracker: Optional[torch.nn.Module]
    tracker_neck: Optional[torch.nn.Module]
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    image_size: int
    source: str

    @property
    def has_tracker(self) -> bool:
        return self.tracker is not None and self.tracker_neck is not None


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
                "CUDA was requested but no CUDA GPU is available to this PyTorch; use --device cpu, or install a "
                "CUDA build of PyTorch."
            )
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return torch.device(name), torch.bfloat16
    if name != "cpu":
        raise DeviceError(f"Unknown device {name!r}; use auto, cpu, cuda or cuda:N.")
    return torch.device("cpu"), torch.float32


def tiny_detector_config(
    image_size: int = 112,
    hidden: int = 128,
    patch_size: int = 14,
    vit_hidden: int = 64,
    vit_layers: int = 2,
    num_queries: int = 20,
    text_hidden: int = 32,
) -> Sam3Config:
    """A small ``Sam3Config`` with the real CLIP vocabulary (49 408 tokens) so the real tokenizer applies."""
    grid = image_size // patch_size
    return Sam3Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model",
                hidden_size=vit_hidden,
                intermediate_size=2 * vit_hidden,
                num_hidden_layers=vit_layers,
                num_attention_heads=2,
                image_size=image_size,
                patch_size=patch_size,
                window_size=4,
                global_attn_indexes=[vit_layers - 1],
                pretrain_image_size=image_size,
            ),
            fpn_hidden_size=hidden,
            backbone_feature_sizes=[[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]],
        ),
        text_config=dict(
            model_type="clip_text_model",
            vocab_size=49408,
            hidden_size=text_hidden,
            intermediate_size=2 * text_hidden,
            projection_dim=text_hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
        ),
        geometry_encoder_config=dict(hidden_size=hidden, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_encoder_config=dict(hidden_size=hidden, num_layers=1, num_attention_heads=2, intermediate_size=128),
        detr_decoder_config=dict(
            hidden_size=hidden, num_layers=2, num_queries=num_queries, num_attention_heads=2, intermediate_size=128
        ),
        mask_decoder_config=dict(hidden_size=hidden, num_attention_heads=2),
    )


def tiny_video_config(detector: Optional[Sam3Config] = None, num_maskmem: int = 7) -> Sam3VideoConfig:
    """A ``Sam3VideoConfig`` (detector + memory tracker) around a tiny detector config."""
    det = detector or tiny_detector_config()
    hidden = det.vision_config.fpn_hidden_size
    size = det.vision_config.backbone_config.image_size
    cfg = Sam3VideoConfig(
        detector_config=det.to_dict(),
        tracker_config=dict(
            model_type="sam3_tracker_video",
            vision_config=det.vision_config.to_dict(),
            prompt_encoder_config=dict(hidden_size=hidden, image_size=size, mask_input_channels=16),
            mask_decoder_config=dict(hidden_size=hidden, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=hidden),
            num_maskmem=num_maskmem,
            memory_attention_hidden_size=hidden,
            memory_attention_num_layers=1,
            memory_attention_feed_forward_hidden_size=64,
            memory_encoder_hidden_size=hidden,
            memory_encoder_output_channels=64,
            mask_downsampler_embed_dim=hidden,
            memory_fuser_embed_dim=hidden,
            memory_fuser_intermediate_dim=64,
        ),
        low_res_mask_size=4 * size // det.vision_config.backbone_config.patch_size,
    )
    cfg.image_size = size
    return cfg


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
