"""The benchmark model configurations (tiny, small, full) and the shared volume/prompt inputs.

``tiny`` and ``small`` are the small random configurations the stock pipeline was first measured with, so the
numbers compare with those measurements; ``full`` is transformers' default ``Sam3VideoConfig`` (SAM3 at 1008², ViT-L). Weights are random:
the benchmarks measure cost, not quality.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import Sam3Config, Sam3VideoConfig, Sam3VideoModel

from medsam3_core.io.geometry import Volume

__all__ = ["CONFIGS", "PROMPTS", "build_video", "random_volume"]

#: Five prompts; runs with P prompts use the first P.
PROMPTS = ["liver", "spleen", "left kidney", "right kidney", "pancreas"]

CONFIGS = {
    "tiny": dict(size=112, vit=(32, 2, 2, 64, 4, [1]), text=(32, 2), hidden=128, detr=(1, 2, 2, 64, 20),
                 tracker=(64, 1, 64, 64)),
    "small": dict(size=224, vit=(128, 4, 4, 512, 8, [1, 3]), text=(64, 2), hidden=128, detr=(2, 2, 4, 256, 50),
                  tracker=(256, 2, 256, 256)),
}


def _video_config(name: str) -> Sam3VideoConfig:
    if name == "full":
        return Sam3VideoConfig(hotstart_delay=0, score_threshold_detection=0.0, new_det_thresh=0.0)
    c = CONFIGS[name]
    size, (vh, vl, vheads, vmlp, window, glob), (th, tl), h = c["size"], c["vit"], c["text"], c["hidden"]
    enc_layers, dec_layers, heads, ffn, queries = c["detr"]
    mlp, mem_layers, mem_ffn, fuser = c["tracker"]
    grid = size // 14
    det = Sam3Config(
        vision_config=dict(
            backbone_config=dict(model_type="sam3_vit_model", hidden_size=vh, intermediate_size=vmlp,
                                 num_hidden_layers=vl, num_attention_heads=vheads, image_size=size, patch_size=14,
                                 window_size=window, global_attn_indexes=glob, pretrain_image_size=size),
            fpn_hidden_size=h, backbone_feature_sizes=[[4 * grid] * 2, [2 * grid] * 2, [grid] * 2]),
        text_config=dict(model_type="clip_text_model", vocab_size=49408, hidden_size=th, intermediate_size=2 * th,
                         projection_dim=th, num_hidden_layers=tl, num_attention_heads=2, max_position_embeddings=32),
        geometry_encoder_config=dict(hidden_size=h, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_encoder_config=dict(hidden_size=h, num_layers=enc_layers, num_attention_heads=heads,
                                 intermediate_size=ffn),
        detr_decoder_config=dict(hidden_size=h, num_layers=dec_layers, num_queries=queries, num_attention_heads=heads,
                                 intermediate_size=ffn),
        mask_decoder_config=dict(hidden_size=h, num_attention_heads=2),
    )
    cfg = Sam3VideoConfig(
        detector_config=det.to_dict(),
        tracker_config=dict(
            model_type="sam3_tracker_video", vision_config=det.vision_config.to_dict(),
            prompt_encoder_config=dict(hidden_size=h, image_size=size, mask_input_channels=16),
            mask_decoder_config=dict(hidden_size=h, mlp_dim=mlp, num_attention_heads=2, iou_head_hidden_dim=h),
            num_maskmem=7, memory_attention_hidden_size=h, memory_attention_num_layers=mem_layers,
            memory_attention_feed_forward_hidden_size=mem_ffn, memory_encoder_hidden_size=h,
            memory_encoder_output_channels=64, mask_downsampler_embed_dim=h, memory_fuser_embed_dim=h,
            memory_fuser_intermediate_dim=fuser),
        low_res_mask_size=4 * size // 14, hotstart_delay=0, score_threshold_detection=0.0, new_det_thresh=0.0,
    )
    cfg.image_size = size
    return cfg


def build_video(name: str, seed: int = 0) -> Sam3VideoModel:
    """A random-init ``Sam3VideoModel`` of the named configuration (seeded, eval mode)."""
    torch.manual_seed(seed)
    return Sam3VideoModel(_video_config(name)).eval()


def random_volume(num_slices: int, size: int, seed: int = 0) -> Volume:
    """A random ``(num_slices, size, size)`` volume (square slices, so no letterbox padding, like the video)."""
    rng = np.random.default_rng(seed)
    return Volume(rng.uniform(0, 255, (num_slices, size, size)).astype(np.float32), modality="MR")
