"""Configured data sources → cases → per-dataset train/validation :class:`PromptDataset`\\ s."""

from __future__ import annotations

from pathlib import Path

from medsam3_core.errors import InputError

from training.config import SOURCE_KINDS, SYNTHETIC_KINDS, DataConfig, SourceConfig, parse_source
from training.data.manifests import folder2d_cases, jsonl_cases, nnunet_cases, split_cases
from training.data.augment import AUGMENT_PRESETS
from training.data.phantom_source import brain_template_cases, mni_brain_cases, phantom_cases
from training.data.samples import Case, PromptDataset

__all__ = ["SYNTHETIC_KINDS", "HELDOUT_FAMILY_SEED", "cases_for", "build_datasets", "parse_source", "datasets_for"]

#: First seed of the held-out phantom family: far from every training (1000…) and held-out (90 000…) seed.
HELDOUT_FAMILY_SEED = 700_000


def cases_for(src: SourceConfig) -> list[Case]:
    """All cases of one source."""
    name = src.name or src.kind
    if src.kind == "nnunet":
        return nnunet_cases(Path(src.path), name, src.modality)
    if src.kind == "folder2d":
        return folder2d_cases(Path(src.path), name, src.modality)
    if src.kind == "jsonl":
        return jsonl_cases(Path(src.path), name, src.modality)
    if src.kind == "phantom":
        return phantom_cases(name, src.cases, **({"seed": src.seed} if src.seed else {}))
    if src.kind == "mni_brain":
        return mni_brain_cases(name, src.cases, **({"seed": src.seed} if src.seed else {}))
    if src.kind in ("phantom_varied", "phantom_heldout"):
        family = "heldout" if src.kind == "phantom_heldout" else "train"
        seed = src.seed or (HELDOUT_FAMILY_SEED if family == "heldout" else 1000)
        return phantom_cases(name, src.cases, seed, varied=True, family=family)
    if src.kind == "brain_templates":
        return brain_template_cases(name, src.cases, **({"seed": src.seed} if src.seed else {}))
    raise InputError(f"unknown data source kind {src.kind!r}; use one of {', '.join(SOURCE_KINDS)}")


def build_datasets(
    cfg: DataConfig, image_size: int, seed: int, keep_aspect: bool = True
) -> tuple[list[PromptDataset], list[PromptDataset], list[float]]:
    """``(train, val, weights)``: one dataset per source, split 85/15 by case with ``cfg.split_seed``.

    Every source's concepts form the shared negative vocabulary, so a brain scan is also asked for "liver".
    ``keep_aspect`` is the input convention of the weights being trained (letterbox, or stretch for Meta's).
    """
    per_source = [(src, cases_for(src)) for src in cfg.sources]
    vocabulary = sorted({t for _, cases in per_source for c in cases for t in c.concepts.values()})
    train, val, weights = [], [], []
    for i, (src, cases) in enumerate(per_source):
        tr, va = split_cases(cases, cfg.val_fraction, cfg.split_seed)
        common = dict(image_size=image_size, vocabulary=vocabulary, min_pixels=cfg.min_instance_pixels,
                      keep_aspect=keep_aspect)
        train.append(PromptDataset(tr, negative_prob=cfg.negative_prob, augment=cfg.augment, seed=seed + i,
                                   augment_settings=AUGMENT_PRESETS[cfg.augment_preset], **common))
        if va:
            val.append(PromptDataset(va, negative_prob=0.0, augment=False, seed=seed + i, **common))
        weights.append(src.weight)
        if len(train[-1]) == 0:
            raise InputError(f"data source {src.name or src.kind} has no labelled slices in its training split")
    return train, val, weights


def datasets_for(specs: list[str], image_size: int, split: str = "val") -> list[PromptDataset]:
    """Un-augmented datasets of ``specs`` for evaluation: the validation split, or ``all`` cases."""
    sources = [parse_source(s) for s in specs]
    per_source = [cases_for(s) for s in sources]
    vocabulary = sorted({t for cases in per_source for c in cases for t in c.concepts.values()})
    out = []
    for cases in per_source:
        chosen = cases if split == "all" else split_cases(cases)[1]
        out.append(PromptDataset(chosen, image_size, vocabulary, negative_prob=0.0, augment=False))
    return out
