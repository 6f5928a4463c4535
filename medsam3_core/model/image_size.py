"""The input size is a property of the model, fixed when the model is built (converted).

SAM3 sees square images of one size. The published SAM3 runs at 1008 px (a 72 × 72 grid of 14-px patches); the
Medical SAM3 3D release was trained at 504 px (36 × 36 patches) and should run as it was trained. The size cannot be
changed per call: the ViT's global-attention layers precompute their rotary position tables for it, and the tracker
derives its feature-map sizes, memory-attention RoPE grid and mask-prompt size from it. The weights do not depend on
it — the learned absolute position embedding covers a 24 × 24 grid and is tiled over whatever grid the image has —
so one checkpoint converts at any multiple of the patch size.

The chosen size is written into the converted model's ``config.json`` (``vision_config.backbone_config.image_size``
and the tracker's sizes), so inference (``Sam3Bundle.image_size``), training and the server all read it from there.

How windowed attention treats a grid that is not a multiple of the window (36 patches, window 24): the grid is
padded with zeros after the layer norm to 48 × 48 and cut into four 24 × 24 windows; attention inside a window is not
masked, so the zero tokens take part as keys, and they are cut away afterwards. Meta's ViTDet-style blocks pad the
same way (after ``norm1``, with zeros, no mask), so both implementations compute the same thing at 504 px.
"""

from __future__ import annotations

import copy

from transformers import PretrainedConfig, Sam3Config, Sam3VideoConfig

from medsam3_core.errors import CheckpointError

__all__ = ["config_image_size", "with_image_size"]


def config_image_size(config: PretrainedConfig) -> int:
    """The square input size a ``Sam3Config`` / ``Sam3VideoConfig`` is built for."""
    detector = config.detector_config if isinstance(config, Sam3VideoConfig) else config
    return int(detector.vision_config.backbone_config.image_size)


def _patch_size(config: PretrainedConfig) -> int:
    detector = config.detector_config if isinstance(config, Sam3VideoConfig) else config
    return int(detector.vision_config.backbone_config.patch_size)


def with_image_size(config: PretrainedConfig, size: int) -> PretrainedConfig:
    """A copy of ``config`` built for ``size`` × ``size`` input (detector, tracker and their derived sizes).

    Raises:
        CheckpointError: ``size`` is not a positive multiple of the ViT patch size.
    """
    patch = _patch_size(config)
    if not isinstance(size, int) or size <= 0 or size % patch:
        raise CheckpointError(
            f"--image-size must be a positive multiple of the {patch}-px patch size (e.g. {36 * patch} or "
            f"{72 * patch}), got {size!r}."
        )
    config = copy.deepcopy(config)
    grid = size // patch
    feature_sizes = [[4 * grid, 4 * grid], [2 * grid, 2 * grid], [grid, grid]]
    if isinstance(config, Sam3VideoConfig):
        config.image_size = size  # transformers' setter: detector + tracker (feature sizes, memory RoPE grid)
        config.low_res_mask_size = 4 * grid
        config.detector_config.vision_config.backbone_feature_sizes = feature_sizes
    elif isinstance(config, Sam3Config):
        config.vision_config.image_size = size
        config.vision_config.backbone_feature_sizes = feature_sizes
    else:
        raise CheckpointError(f"Cannot set the image size of a {type(config).__name__}.")
    return config
