"""Small SAM3 configurations (same architecture, fewer and narrower layers) for tests, benchmarks and the demo model.

The one factory for them: the tests, ``bench/configs.py`` and ``training`` (``model.init = "tiny"``) all build their
configurations here, so a change to transformers' SAM3 config classes is absorbed in one place.

Constraints a small SAM3 must keep (found by building them): the FPN width ``hidden`` must be a multiple of 8 and
larger than the tracker's 64 memory channels (the memory encoder projects ``hidden`` down to 64), and the text
encoder keeps CLIP's real 49 408-token vocabulary so the real tokenizer applies. ``image_size`` must be a multiple
of ``patch_size``; the backbone's three FPN levels are 4×, 2× and 1× the patch grid.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from transformers import Sam3Config, Sam3VideoConfig

__all__ = ["tiny_detector_config", "tiny_video_config"]


def tiny_detector_config(
    image_size: int = 112,
    hidden: int = 128,
    patch_size: int = 14,
    vit_hidden: int = 64,
    vit_layers: int = 2,
    num_queries: int = 20,
    text_hidden: int = 32,
    *,
    vit_heads: int = 2,
    vit_mlp: Optional[int] = None,
    window_size: int = 4,
    global_attn_indexes: Optional[Sequence[int]] = None,
    text_layers: int = 2,
    detr_encoder_layers: int = 1,
    detr_decoder_layers: int = 2,
    detr_heads: int = 2,
    detr_ffn: int = 128,
) -> Sam3Config:
    """A small ``Sam3Config``. ``vit_mlp`` defaults to ``2 · vit_hidden`` and ``global_attn_indexes`` to the last
    ViT layer (windowed attention everywhere else, as in SAM3)."""
    grid = image_size // patch_size
    return Sam3Config(
        vision_config=dict(
            backbone_config=dict(
                model_type="sam3_vit_model",
                hidden_size=vit_hidden,
                intermediate_size=vit_mlp or 2 * vit_hidden,
                num_hidden_layers=vit_layers,
                num_attention_heads=vit_heads,
                image_size=image_size,
                patch_size=patch_size,
                window_size=window_size,
                global_attn_indexes=list(global_attn_indexes) if global_attn_indexes else [vit_layers - 1],
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
            num_hidden_layers=text_layers,
            num_attention_heads=2,
            max_position_embeddings=32,
        ),
        geometry_encoder_config=dict(hidden_size=hidden, num_layers=1, num_attention_heads=2, intermediate_size=64),
        detr_encoder_config=dict(
            hidden_size=hidden,
            num_layers=detr_encoder_layers,
            num_attention_heads=detr_heads,
            intermediate_size=detr_ffn,
        ),
        detr_decoder_config=dict(
            hidden_size=hidden,
            num_layers=detr_decoder_layers,
            num_queries=num_queries,
            num_attention_heads=detr_heads,
            intermediate_size=detr_ffn,
        ),
        mask_decoder_config=dict(hidden_size=hidden, num_attention_heads=2),
    )


def tiny_video_config(
    detector: Optional[Sam3Config] = None,
    num_maskmem: int = 7,
    *,
    tracker_mlp: int = 64,
    memory_attention_layers: int = 1,
    memory_attention_ffn: int = 64,
    memory_fuser_ffn: int = 64,
    **video_settings: Any,
) -> Sam3VideoConfig:
    """A ``Sam3VideoConfig`` (detector + memory tracker) around a tiny detector config; ``video_settings`` are
    further ``Sam3VideoConfig`` arguments (e.g. the stock pipeline's ``hotstart_delay``)."""
    det = detector or tiny_detector_config()
    hidden = det.vision_config.fpn_hidden_size
    size = det.vision_config.backbone_config.image_size
    cfg = Sam3VideoConfig(
        detector_config=det.to_dict(),
        tracker_config=dict(
            model_type="sam3_tracker_video",
            vision_config=det.vision_config.to_dict(),
            prompt_encoder_config=dict(hidden_size=hidden, image_size=size, mask_input_channels=16),
            mask_decoder_config=dict(
                hidden_size=hidden, mlp_dim=tracker_mlp, num_attention_heads=2, iou_head_hidden_dim=hidden
            ),
            num_maskmem=num_maskmem,
            memory_attention_hidden_size=hidden,
            memory_attention_num_layers=memory_attention_layers,
            memory_attention_feed_forward_hidden_size=memory_attention_ffn,
            memory_encoder_hidden_size=hidden,
            memory_encoder_output_channels=64,
            mask_downsampler_embed_dim=hidden,
            memory_fuser_embed_dim=hidden,
            memory_fuser_intermediate_dim=memory_fuser_ffn,
        ),
        low_res_mask_size=4 * size // det.vision_config.backbone_config.patch_size,
        **video_settings,
    )
    cfg.image_size = size
    return cfg
