"""From cases (an image or volume plus its label map and label→text dictionary) to prompt samples.

A *case* is one patient scan or one 2D picture. Volumes are cut into 2D slices along the axial axis chosen from the
geometry (the inference core does the same, :func:`medsam3_core.engine.preprocess.slice_stack`), normalised with the
same per-volume :class:`~medsam3_core.engine.preprocess.IntensityNormalizer`, resized with the same
:class:`~medsam3_core.engine.preprocess.Letterbox` (letterbox or stretch, the weights' convention) and scaled with
:func:`~medsam3_core.engine.preprocess.to_model_input` — so the network is trained on exactly the inputs it will see at
inference.

A training sample is (slice, one concept text, that concept's instances): the connected components of the concept's
label, each an instance mask with its box. With probability ``negative_prob`` the text is instead a concept that
is *absent* from the slice (taken from all datasets' vocabularies), with no instances, so the presence head learns
"nothing here". Randomness is a pure function of ``(seed, epoch, index)``, so a resumed run sees the same samples.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume
from medsam3_core.engine.preprocess import IntensityNormalizer, Letterbox, slice_stack, to_model_input

from training.losses.boxes import masks_to_boxes
from training.losses.criterion import Target
from training.data.augment import AUGMENT_PRESETS, AugmentSettings, augment_pair

__all__ = ["Case", "SliceRef", "PromptSample", "PromptDataset", "collate", "instances_of"]


@dataclass
class Case:
    """One scan or picture: ``load()`` returns the image volume and an aligned integer label array ``[k, j, i]``.

    ``concepts`` is the dataset's label→text dictionary (one canonical concept per label value).
    """

    dataset: str
    case_id: str
    concepts: dict[int, str]
    load: Callable[[], tuple[Volume, np.ndarray]]


@dataclass(frozen=True)
class SliceRef:
    """Slice ``index`` of case ``case`` (positions in the dataset's case list) and the label values present in it."""

    case: int
    index: int
    present: tuple[int, ...]


@dataclass
class PromptSample:
    pixel_values: torch.Tensor  # (3, S, S) in [-1, 1]
    text: str
    target: Target
    dataset: str


class _CaseCache:
    """Normalised slice stacks of recently used cases (loading and windowing a CT volume costs far more than a step)."""

    def __init__(self, cases: list[Case], capacity: int = 8) -> None:
        self.cases, self.capacity = cases, capacity
        self._items: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i in self._items:
            self._items.move_to_end(i)
            return self._items[i]
        volume, labels = self.cases[i].load()
        if labels.shape[:3] != volume.shape:
            raise InputError(
                f"{self.cases[i].dataset}/{self.cases[i].case_id}: label map shape {labels.shape} does not match "
                f"the image {volume.shape}"
            )
        stack, axis = slice_stack(volume, "axial")
        images = IntensityNormalizer.for_volume(volume)(stack)
        item = (images, np.moveaxis(np.asarray(labels), axis, 0).astype(np.int32))
        self._items[i] = item
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return item


def instances_of(labels: np.ndarray, value: int, min_pixels: int) -> np.ndarray:
    """Connected components (8-connected) of ``labels == value`` as ``(N, H, W)`` bool, dropping specks."""
    comp, n = ndimage.label(labels == value, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return np.zeros((0, *labels.shape), dtype=bool)
    sizes = ndimage.sum_labels(np.ones_like(comp), comp, index=np.arange(1, n + 1))
    keep = [k + 1 for k in range(n) if sizes[k] >= min_pixels]
    return np.stack([comp == k for k in keep]) if keep else np.zeros((0, *labels.shape), dtype=bool)


class PromptDataset(torch.utils.data.Dataset):
    """Prompt samples from the slices of ``cases`` that contain at least one labelled concept.

    Args:
        cases: the cases of one dataset (one split).
        image_size: the model's square input size.
        vocabulary: every concept text that may serve as a negative prompt (all datasets' concepts).
        negative_prob: probability that a sample asks for an absent concept.
        augment: apply :func:`~training.data.augment.augment_pair`.
        seed: base of the per-sample random streams.
        keep_aspect: letterbox (``True``, our convention) or stretch the slices to the square input, as the
            weights being trained expect (``Sam3Bundle.keep_aspect``; Meta's SAM3 stretches).
        augment_settings: the augmentation ranges (:data:`~training.data.augment.AUGMENT_PRESETS`).
    """

    def __init__(
        self,
        cases: list[Case],
        image_size: int,
        vocabulary: list[str],
        negative_prob: float = 0.2,
        augment: bool = True,
        seed: int = 0,
        min_pixels: int = 4,
        keep_aspect: bool = True,
        augment_settings: AugmentSettings = AUGMENT_PRESETS["default"],
    ) -> None:
        self.cases = cases
        self.augment_settings = augment_settings
        self.image_size = image_size
        self.vocabulary = sorted(set(vocabulary))
        self.negative_prob = negative_prob
        self.augment = augment
        self.seed = seed
        self.min_pixels = min_pixels
        self.keep_aspect = keep_aspect
        self.epoch = 0
        self.cache = _CaseCache(cases)
        self.slices = self._index()

    def _index(self) -> list[SliceRef]:
        refs = []
        for ci, case in enumerate(self.cases):
            _, labels = self.cache.get(ci)
            wanted = np.array(sorted(case.concepts), dtype=np.int32)
            for si in range(labels.shape[0]):
                present = tuple(int(v) for v in np.intersect1d(np.unique(labels[si]), wanted))
                if present:
                    refs.append(SliceRef(ci, si, present))
        return refs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.slices)

    def load_slice(self, i: int) -> tuple[np.ndarray, np.ndarray, Case]:
        """Normalised image (H, W[, 3]) and label map (H, W) of slice ``i``."""
        ref = self.slices[i]
        images, labels = self.cache.get(ref.case)
        return images[ref.index], labels[ref.index], self.cases[ref.case]

    def __getitem__(self, i: int) -> PromptSample:
        rng = np.random.default_rng((self.seed, self.epoch, i))
        ref = self.slices[i]
        image, labels, case = self.load_slice(i)
        present_texts = {case.concepts[v] for v in ref.present}
        absent = [t for t in self.vocabulary if t not in present_texts]
        if self.augment:
            image, labels = augment_pair(image, labels, rng, self.augment_settings)
        letterbox = Letterbox(labels.shape[0], labels.shape[1], self.image_size, keep_aspect=self.keep_aspect)
        if absent and rng.random() < self.negative_prob:
            text, masks = absent[rng.integers(len(absent))], np.zeros((0, self.image_size, self.image_size), bool)
        else:
            value = ref.present[rng.integers(len(ref.present))]
            text = case.concepts[value]
            # all label values that share this text (e.g. two labels mapped to one concept) form its instances
            values = [v for v, t in case.concepts.items() if t == text]
            square = letterbox.mask(labels)
            masks = np.concatenate([instances_of(square, v, self.min_pixels) for v in values])
        masks_t = torch.from_numpy(masks)
        pixels = to_model_input(image[None], letterbox)[0]
        return PromptSample(pixels, text, Target(masks_t, masks_to_boxes(masks_t)), case.dataset)


def collate(samples: list[PromptSample]) -> dict:
    """Batch of samples: stacked pixels, texts, targets and dataset names (tokenised later, once per text)."""
    return {
        "pixel_values": torch.stack([s.pixel_values for s in samples]),
        "texts": [s.text for s in samples],
        "targets": [s.target for s in samples],
        "datasets": [s.dataset for s in samples],
    }
