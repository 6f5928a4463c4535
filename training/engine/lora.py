"""LoRA fine-tuning (peft) — an extension beyond the paper's full fine-tune, off by default (``model.lora_rank``).

Low-rank adapters go on the attention and MLP projections of every transformer in SAM3 (ViT, text encoder, DETR
encoder/decoder, mask decoder); everything else is frozen. That trains ~1 % of the parameters, which is what makes
fine-tuning the 840 M-parameter model feasible on one smaller GPU (the compute cost the paper's authors name as a
limitation). Exports merge the adapters into a copy of the weights, so the result loads like any other model.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
from transformers import Sam3Model

__all__ = ["LORA_TARGETS", "apply_lora", "merged"]

#: Linear layers (by attribute name) that receive adapters.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "fc1", "fc2"]


def apply_lora(detector: Sam3Model, rank: int, alpha: float, dropout: float = 0.0) -> torch.nn.Module:
    """Wrap ``detector`` in a peft model with LoRA adapters (modules are replaced in place); only adapters train."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS, bias="none")
    return get_peft_model(detector, config)


@contextlib.contextmanager
def merged(model, trainable: torch.nn.Module) -> Iterator:
    """``model`` itself when ``trainable`` has no adapters; otherwise a copy with the adapters merged in."""
    if not hasattr(trainable, "merge_and_unload"):
        yield model
        return
    from training.engine.modelling import TrainModel

    root, peft_model = copy.deepcopy((model.root, trainable))  # one deepcopy: the copies share the detector
    plain = peft_model.merge_and_unload()
    detector = root.detector_model if hasattr(root, "detector_model") else plain
    yield TrainModel(root if root is not model.detector else plain, detector, model.source, model.keep_aspect,
                    model.geometry_cls)
