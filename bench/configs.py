"""The benchmark model configurations (tiny, small, full) and the shared volume/prompt inputs.

``tiny`` and ``small`` are small SAM3s built by :mod:`medsam3_core.model.tiny_config` (``tiny``: 112², ViT 32 wide
and 2 layers deep; ``small``: 224², ViT 128 wide and 4 layers deep), kept fixed so results compare across runs;
``full`` is transformers' default ``Sam3VideoConfig`` (SAM3 at 1008², ViT-L). Weights are random:
the benchmarks measure cost, not quality.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import Sam3VideoConfig, Sam3VideoModel

from medsam3_core.io.geometry import Volume
from medsam3_core.model.tiny_config import tiny_detector_config, tiny_video_config

__all__ = ["CONFIGS", "PROMPTS", "build_video", "random_volume"]

#: Five prompts; runs with P prompts use the first P.
PROMPTS = ["liver", "spleen", "left kidney", "right kidney", "pancreas"]

#: The stock pipeline's own post-processing thresholds off, so both implementations keep every detection.
_STOCK_SETTINGS = dict(hotstart_delay=0, score_threshold_detection=0.0, new_det_thresh=0.0)

#: ``tiny_detector_config`` / ``tiny_video_config`` arguments of the small benchmark models.
CONFIGS = {
    "tiny": (
        dict(image_size=112, vit_hidden=32, vit_layers=2, text_hidden=32, detr_encoder_layers=1, detr_decoder_layers=2,
             detr_heads=2, detr_ffn=64, num_queries=20),
        dict(tracker_mlp=64, memory_attention_layers=1, memory_attention_ffn=64, memory_fuser_ffn=64),
    ),
    "small": (
        dict(image_size=224, vit_hidden=128, vit_layers=4, vit_heads=4, vit_mlp=512, window_size=8,
             global_attn_indexes=[1, 3], text_hidden=64, detr_encoder_layers=2, detr_decoder_layers=2, detr_heads=4,
             detr_ffn=256, num_queries=50),
        dict(tracker_mlp=256, memory_attention_layers=2, memory_attention_ffn=256, memory_fuser_ffn=256),
    ),
}


def _video_config(name: str) -> Sam3VideoConfig:
    if name == "full":
        return Sam3VideoConfig(**_STOCK_SETTINGS)
    detector, tracker = CONFIGS[name]
    return tiny_video_config(tiny_detector_config(**detector), **tracker, **_STOCK_SETTINGS)


def build_video(name: str, seed: int = 0) -> Sam3VideoModel:
    """A random-init ``Sam3VideoModel`` of the named configuration (seeded, eval mode)."""
    torch.manual_seed(seed)
    return Sam3VideoModel(_video_config(name)).eval()


def random_volume(num_slices: int, size: int, seed: int = 0) -> Volume:
    """A random ``(num_slices, size, size)`` volume (square slices, so no letterbox padding, like the video)."""
    rng = np.random.default_rng(seed)
    return Volume(rng.uniform(0, 255, (num_slices, size, size)).astype(np.float32), modality="MR")
