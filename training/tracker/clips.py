"""Short slice clips from 3D volumes, to train the memory tracker the way inference uses it.

At inference (:mod:`medsam3_core.engine.volume_engine`, track mode) an object is seeded from a mask on one slice and
propagated slice by slice, upwards and downwards, through its memory bank. A training *clip* is the same situation in
miniature: ``T`` consecutive slices of one case in one direction (up or down, drawn at random), starting on a slice
where the prompted concept is present, with one ground-truth mask per object and slice.

* **Objects** are the 3D connected components (26-connected) of *every* concept's label that are present on the
  first slice, as the detector reports each component as its own instance and the engine tracks each as its own
  object (both kidneys of a phantom are two objects). All of them are tracked together in one clip, as the engine
  propagates all live objects in one batch. That matters for learning: the objects share every image feature and
  differ only in their memory, so a tracker that ignores its memory and outlines the most salient structure (the
  body) cannot fit them; trained on one concept per clip, the demo's tracker did exactly that for 750 steps
  (DEMO_MODEL.md).
* **Leaving objects**: clips are not cut at the end of an organ, so a clip that starts near an organ's end runs past
  it; the object's mask is then empty on the remaining slices and its object-score target is 0. Such clips are
  rare among all clips (an organ spans most of a case), so the tracker's object score never learned "absent"
  (DEMO_MODEL.md). :class:`ClipSampler` therefore draws a *leaving* clip (:attr:`ClipDataset.leaving`: some
  seeded object ends inside it) with probability ``leave_prob``. Both directions are indexed, so every organ is
  left through its top and through its bottom, as the two sweeps of inference leave it. Objects that *enter* a
  clip are not seeded: at inference a new object comes from a detection, never from the tracker.
* **Memory as at inference**: the default length (:data:`DEFAULT_LENGTH`, 9) is the inference memory bank (7
  frames: the seed and 6 recent ones) plus two, so the bank fills up and its oldest entries are evicted within
  a clip, as they are over a whole volume. Shorter clips only ever trained banks that were never full.
* **Same data, same split, same preprocessing** as the detector's training (:mod:`training.data`): cases come from
  :func:`training.data.sources.cases_for`, are split 85/15 by case with :func:`training.data.manifests.split_cases`
  (seed 42), and are sliced, windowed, letterboxed and scaled by the inference core's own
  :mod:`medsam3_core.engine.preprocess` through the same case cache. Augmentation
  (:func:`training.data.augment.augment_pair`)
  draws one geometric and photometric transform per clip and applies it to every slice of the clip, so the anatomy
  still moves between slices only as it does in the volume.

Sampling is a pure function of ``(seed, step)``: a clip index is drawn per step (datasets in proportion to their
weights), so a run is reproducible without saving sampler state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from medsam3_core.errors import InputError
from medsam3_core.engine.preprocess import Letterbox, to_model_input

from training.config import DataConfig
from training.data.augment import augment_pair
from training.data.manifests import split_cases
from training.data.samples import Case, _CaseCache
from training.data.sources import cases_for

__all__ = ["DEFAULT_LENGTH", "Clip", "ClipRef", "ClipDataset", "ClipSampler", "clip_datasets"]

#: Slices per clip: the inference memory bank (``SegmentOptions.memory_size``, 7) plus two (module docstring).
DEFAULT_LENGTH = 9

_CONNECTIVITY_3D = np.ones((3, 3, 3), dtype=bool)


@dataclass
class Clip:
    """``T`` consecutive slices of one case and the masks of the objects seeded on the first one.

    Attributes:
        pixels: ``(T, 3, S, S)`` model input in ``[-1, 1]`` (letterboxed, as inference).
        masks: ``(N, T, S, S)`` bool: object ``n`` on clip slice ``t`` (on the same letterboxed square).
        slices: the case's slice indices in clip order (decreasing for a downward clip).
        num_slices: slices in the whole case (the tracker normalises object-pointer distances by it).
        concepts: the concept of each object.
        dataset, case_id: where the clip comes from.
    """

    pixels: torch.Tensor
    masks: torch.Tensor
    slices: tuple[int, ...]
    num_slices: int
    concepts: tuple[str, ...]
    dataset: str
    case_id: str

    @property
    def present(self) -> torch.Tensor:
        """``(N, T)`` bool: is object ``n`` on clip slice ``t`` (its object-score target)."""
        return self.masks.flatten(2).any(dim=2)


@dataclass(frozen=True)
class ClipRef:
    """Clip of case ``case`` (position in the dataset's case list): slices ``start``, ``start + direction``, …"""

    case: int
    start: int
    direction: int


class ClipDataset:
    """Every clip of ``length`` slices of ``cases`` that starts on a slice where some concept's object is.

    Args:
        cases: the cases of one dataset (one split).
        image_size: the model's square input size.
        length: slices per clip (≥ 2: the first seeds, the others are propagated).
        augment: one random :func:`~training.data.augment.augment_pair` transform per clip.
        keep_aspect: the model's input convention (``Sam3Bundle.keep_aspect``; letterbox by default).
        min_pixels: an object must cover at least this many pixels of the first slice (specks are not seeded).
        max_objects: at most this many objects per clip (the largest on the first slice).
    """

    def __init__(
        self,
        cases: list[Case],
        image_size: int,
        length: int = DEFAULT_LENGTH,
        augment: bool = True,
        keep_aspect: bool = True,
        min_pixels: int = 16,
        max_objects: int = 8,
    ) -> None:
        if length < 2:
            raise ValueError(f"a clip needs at least 2 slices (one seed, one propagated), got {length}")
        self.cases = cases
        self.image_size = image_size
        self.length = length
        self.augment = augment
        self.keep_aspect = keep_aspect
        self.min_pixels = min_pixels
        self.max_objects = max_objects
        self.cache = _CaseCache(cases, capacity=max(len(cases), 1))
        self.refs, self.leaving = self._index()

    @property
    def name(self) -> str:
        return self.cases[0].dataset if self.cases else ""

    def __len__(self) -> int:
        return len(self.refs)

    def _index(self) -> tuple[list[ClipRef], list[int]]:
        """Every clip, and the positions of those in which a seeded object leaves (is absent on a later slice)."""
        refs: list[ClipRef] = []
        leaving: list[int] = []
        for ci in range(len(self.cases)):
            components, _ = self._objects(ci)
            count = components.shape[0]
            for start in range(count):
                sizes = np.bincount(components[start].ravel())
                seeded = np.flatnonzero(sizes >= self.min_pixels)
                seeded = seeded[seeded > 0]
                if not seeded.size:
                    continue
                for direction in (1, -1):
                    end = start + direction * (self.length - 1)
                    if not 0 <= end < count:
                        continue
                    if not np.isin(seeded, components[end]).all():
                        leaving.append(len(refs))
                    refs.append(ClipRef(ci, start, direction))
        return refs, leaving

    def _objects(self, ci: int) -> tuple[np.ndarray, list[int]]:
        """3D components of every concept of case ``ci``, numbered 1… across concepts, and each one's label value."""
        _, labels = self.cache.get(ci)
        objects = np.zeros(labels.shape, np.int32)
        values: list[int] = []
        for value in sorted(self.cases[ci].concepts):
            components, n = ndimage.label(labels == value, structure=_CONNECTIVITY_3D)
            if n:
                objects[components > 0] = components[components > 0] + len(values)
                values += [int(value)] * n
        return objects, values

    def clip(self, i: int, rng: Optional[np.random.Generator] = None) -> Clip:
        """Clip ``i``; ``rng`` draws its augmentation (none without one or with ``augment=False``)."""
        ref = self.refs[i]
        case = self.cases[ref.case]
        images, _ = self.cache.get(ref.case)
        slices = tuple(ref.start + ref.direction * t for t in range(self.length))
        components, values = self._objects(ref.case)
        sizes = np.bincount(components[ref.start].ravel())
        sizes[0] = 0
        ids = [int(k) for k in np.argsort(-sizes, kind="stable") if sizes[k] >= self.min_pixels][: self.max_objects]
        lut = np.zeros(int(components.max()) + 1, dtype=np.int32)
        lut[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
        objects = lut[components[list(slices)]]  # (T, H, W): 0 background, n = object n
        clip_images = images[list(slices)]
        if self.augment and rng is not None:
            clip_images, objects = _augment_clip(clip_images, objects, rng)
        letterbox = Letterbox(objects.shape[1], objects.shape[2], self.image_size, keep_aspect=self.keep_aspect)
        square = letterbox.mask(objects)
        masks = np.stack([square == n for n in range(1, len(ids) + 1)])
        pixels = to_model_input(clip_images, letterbox)
        concepts = tuple(case.concepts[values[k - 1]] for k in ids)
        return Clip(pixels, torch.from_numpy(masks), slices, int(components.shape[0]), concepts, case.dataset,
                    case.case_id)


def _augment_clip(images: np.ndarray, objects: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The same random transform on every slice: ``images (T, H, W[, C])`` in [0, 1], object maps ``(T, H, W)``.

    :func:`augment_pair` draws its geometry first, so a generator restarted from one seed for every slice gives
    every slice the same zoom, rotation and shift (the images go in together as channels; noise differs per slice).
    """
    seed = int(rng.integers(2**63))
    length = images.shape[0]
    grey = images.ndim == 3
    stacked = np.moveaxis(images, 0, -1) if grey else np.concatenate(list(images), axis=-1)  # (H, W, T·C)
    out, _ = augment_pair(stacked, objects[0], np.random.default_rng(seed))
    out = np.moveaxis(out, -1, 0) if grey else np.stack(np.split(out, length, axis=-1))
    blank = np.zeros(objects.shape[1:], np.float32)
    moved = np.stack([augment_pair(blank, objects[t], np.random.default_rng(seed))[1] for t in range(length)])
    return out, moved


class ClipSampler:
    """Draws clips from several datasets in proportion to ``weights``; clip ``step`` depends on ``(seed, step)``.

    With probability ``leave_prob`` the clip is drawn among the dataset's leaving clips (module docstring), where it
    has any; otherwise among all its clips.
    """

    def __init__(
        self, datasets: Sequence[ClipDataset], weights: Sequence[float], seed: int = 0, leave_prob: float = 0.0
    ) -> None:
        if not 0.0 <= leave_prob <= 1.0:
            raise ValueError(f"leave_prob must be in [0, 1], got {leave_prob}")
        kept = [(d, w) for d, w in zip(datasets, weights) if len(d)]
        if not kept:
            raise InputError("no clips: no dataset has a labelled slice with room for a clip in its split")
        self.datasets = [d for d, _ in kept]
        w = np.asarray([w for _, w in kept], dtype=float)
        self.probs = w / w.sum()
        self.seed = seed
        self.leave_prob = leave_prob

    def __call__(self, step: int) -> Clip:
        rng = np.random.default_rng((self.seed, step))
        dataset = self.datasets[int(rng.choice(len(self.datasets), p=self.probs))]
        leave = rng.random() < self.leave_prob
        if leave and dataset.leaving:
            return dataset.clip(dataset.leaving[int(rng.integers(len(dataset.leaving)))], rng)
        return dataset.clip(int(rng.integers(len(dataset))), rng)


def clip_datasets(
    cfg: DataConfig,
    image_size: int,
    length: int = DEFAULT_LENGTH,
    keep_aspect: bool = True,
    augment: bool = True,
) -> tuple[list[ClipDataset], list[ClipDataset], list[float]]:
    """``(train, val, weights)`` clip datasets of ``cfg.sources``, split by case exactly as the detector's training
    (:func:`training.data.sources.build_datasets`): 85/15 with ``cfg.split_seed``; validation is not augmented."""
    train, val, weights = [], [], []
    for src in cfg.sources:
        tr, va = split_cases(cases_for(src), cfg.val_fraction, cfg.split_seed)
        common = dict(image_size=image_size, length=length, keep_aspect=keep_aspect)
        train.append(ClipDataset(tr, augment=augment and cfg.augment, **common))
        val.append(ClipDataset(va, augment=False, **common) if va else None)
        weights.append(src.weight)
    return train, [v for v in val if v is not None], weights
