"""Optimiser of the paper: per-module learning rates, layer-wise LR decay in the ViT, AdamW, warm-up + 1/√t.

Groups (by ``Sam3Model`` parameter name, as transformers names SAM3's modules):

============================  ==========================================================================  =======
group                         parameters                                                                  paper lr
============================  ==========================================================================  =======
``decoder``                   DETR encoder + decoder, mask decoder (segmentation head), dot-product scoring  3e-4
``vision``                    ViT (with LLRD) and its FPN neck                                               5e-5
``text``                      CLIP text encoder and the text projection ("resizer")                          5e-5
``geometry``                  geometry prompt encoder                                                        1e-4
============================  ==========================================================================  =======

LLRD: ``lr_l = lr_vision · γ^(L − l)``. The paper writes γ 0.85 and L 12 while SAM3's ViT has 32 blocks, so the
blocks are mapped evenly onto levels 1…L (block ``i`` of ``n`` → ``ceil((i+1)·L/n)``); patch/position embeddings
and the pre-norm are level 0, the neck level L. Biases, norms and embeddings get no weight decay.

Schedule: linear warm-up to the group lr over ``warmup_steps``, then ``lr·√(warmup/step)``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable

import torch

from medsam3_core.model.checkpoints import strip_wrappers as _strip  # peft and DDP wrap the detector

__all__ = ["OptimConfig", "param_group_name", "vit_level", "build_param_groups", "build_optimizer", "lr_factor"]

_VIT_BLOCK = re.compile(r"vision_encoder\.backbone\.layers\.(\d+)\.")


@dataclass
class OptimConfig:
    """Optimiser and schedule settings; defaults are the paper's."""

    lr_decoder: float = 3e-4
    lr_vision: float = 5e-5
    lr_text: float = 5e-5
    lr_geometry: float = 1e-4
    llrd_gamma: float = 0.85
    llrd_levels: int = 12
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 1000
    grad_clip: float = 0.1


def param_group_name(name: str) -> str:
    """``decoder`` | ``vision`` | ``text`` | ``geometry`` for a ``Sam3Model`` parameter name."""
    name = _strip(name)
    if name.startswith("vision_encoder."):
        return "vision"
    if name.startswith(("text_encoder.", "text_projection.")):
        return "text"
    if name.startswith("geometry_encoder."):
        return "geometry"
    if name.startswith(("detr_encoder.", "detr_decoder.", "mask_decoder.", "dot_product_scoring.")):
        return "decoder"
    raise ValueError(f"parameter {name!r} belongs to no optimiser group; training.optim needs updating")


def vit_level(name: str, num_blocks: int, levels: int) -> int:
    """LLRD depth level of a vision parameter: 0 for the stem, ``ceil((i+1)·L/n)`` for block ``i``, L for the neck."""
    name = _strip(name)
    m = _VIT_BLOCK.match(name)
    if m:
        return math.ceil((int(m.group(1)) + 1) * levels / num_blocks)
    if name.startswith("vision_encoder.backbone."):
        return 0
    return levels


def _no_decay(name: str, p: torch.Tensor) -> bool:
    return p.ndim < 2 or "norm" in name or "embedding" in name or name.endswith(".bias")


def build_param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    """AdamW parameter groups with ``lr`` and ``name`` keys (``lr`` is the peak; the scheduler scales it)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    num_blocks = 1 + max([int(m.group(1)) for n, _ in named if (m := _VIT_BLOCK.match(_strip(n)))], default=0)
    base = {"decoder": cfg.lr_decoder, "vision": cfg.lr_vision, "text": cfg.lr_text, "geometry": cfg.lr_geometry}
    groups: dict[tuple[str, int, bool], dict] = {}
    for n, p in named:
        group = param_group_name(n)
        lr = base[group]
        level = -1
        if group == "vision":
            level = vit_level(n, num_blocks, cfg.llrd_levels)
            lr = lr * cfg.llrd_gamma ** (cfg.llrd_levels - level)
        nd = _no_decay(n, p)
        key = (group, level, nd)
        if key not in groups:
            label = group if level < 0 else f"{group}.level{level}"
            groups[key] = {
                "name": label + (".no_decay" if nd else ""),
                "params": [],
                "lr": lr,
                "weight_decay": 0.0 if nd else cfg.weight_decay,
            }
        groups[key]["params"].append(p)
    return sorted(groups.values(), key=lambda g: g["name"])


def lr_factor(step: int, warmup_steps: int) -> float:
    """Multiplier of the peak lr at optimiser step ``step`` (0-based): linear warm-up, then inverse square root."""
    if warmup_steps <= 0:
        return 1.0
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return math.sqrt(warmup_steps / (step + 1))


def build_optimizer(
    params: Iterable[dict], cfg: OptimConfig
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``params`` and the warm-up/inverse-sqrt ``LambdaLR`` (``scheduler.step()`` per optimiser step)."""
    groups = list(params)
    opt = torch.optim.AdamW(groups, betas=tuple(cfg.betas), fused=False)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.warmup_steps))
    return opt, sched
