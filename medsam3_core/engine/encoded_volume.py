"""A volume prepared for the engine, and the per-slice features computed from it (the unit a session keeps).

What depends only on the volume and the image settings — the slice stack along the chosen axis, the intensity
window, the letterbox to the model's square input, the ViT's output and the tracker's features of every slice — is
kept here, apart from what depends on the prompts. A single run uses it once and closes it; a volume session
(:mod:`~medsam3_core.engine.session`) keeps it between prompts, so a new prompt costs only its text, the detector
heads and the tracker: the ViT, the most expensive part of SAM3, runs once per slice per volume.

Two stores (:class:`~medsam3_core.engine.feature_store.FeatureStore`, device → host → file):

* tracker features (the tracker neck on the ViT output: two finer levels and the coarsest level; its position
  encoding depends only on the grid, so one copy serves every slice);
* only for sessions, the ViT's output itself (``last_hidden_state``), from which the detector's FPN neck is
  recomputed for each new prompt (:meth:`Detector.vision_from_hidden`) — storing the four FPN levels instead would
  take about five times the space.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from medsam3_core.engine.detector import Detector
from medsam3_core.engine.feature_store import FeatureStore, StoreBudget
from medsam3_core.engine.preprocess import IntensityNormalizer, slice_stack, to_model_input
from medsam3_core.engine.timing import StageTimer
from medsam3_core.engine.tracker import SliceFeatures
from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume

__all__ = ["EncodedVolume"]


class EncodedVolume:
    """Slice stack, normalisation, letterbox and feature stores of one volume under one image setting.

    Args:
        detector: the engine's detector (letterbox convention, ViT).
        volume: the volume.
        window: intensity window (``SegmentOptions.window``), slice_axis: ``SegmentOptions.slice_axis``.
        keep_vision: also keep the ViT's output (sessions).
        budget: feature-store budget (shared by both stores); :meth:`StoreBudget.for_device` when ``None``.
    """

    def __init__(self, detector: Detector, volume: Volume, window, slice_axis, keep_vision: bool = False,
                 budget: Optional[StoreBudget] = None) -> None:
        self.detector = detector
        self.volume = volume
        self.settings = (window, slice_axis)
        self.stack, self.axis = slice_stack(volume, slice_axis)
        if self.stack.shape[0] == 0 or min(self.stack.shape[1:3]) == 0:
            raise InputError(f"The volume has an empty dimension {volume.shape}; nothing to segment.")
        self.num_slices = int(self.stack.shape[0])
        self.normalize = IntensityNormalizer.for_volume(volume, window)
        self.letterbox = detector.letterbox(self.stack.shape[1], self.stack.shape[2])
        device = detector.bundle.device
        budget = budget if budget is not None else StoreBudget.for_device(device)
        if keep_vision:  # two stores share the budget (their records are about the same size at full size)
            budget = StoreBudget(budget.device_bytes // 2, budget.host_bytes // 2)
        self.tracker_store = FeatureStore(self.num_slices, device, budget)
        self.vision_store = FeatureStore(self.num_slices, device, budget) if keep_vision else None
        self.top_pos: Optional[torch.Tensor] = None
        self.encoder_calls = 0  # ViT passes (batches) run on this volume

    def matches(self, volume: Volume, window, slice_axis) -> bool:
        """Whether this encoding is the one for ``volume`` under these image settings."""
        return volume is self.volume and (window, slice_axis) == self.settings

    # -- the detector's view -----------------------------------------------------------------------------------
    def vision(self, indices: Sequence[int], timer: StageTimer):
        """The ViT + FPN output of the slices: from the kept ViT output when there is one, else by encoding."""
        indices = list(indices)
        if self.vision_store is not None and all(i in self.vision_store for i in indices):
            with timer.stage("store"):
                (hidden,) = self.vision_store.get(indices)
            with timer.stage("encode"):
                return self.detector.vision_from_hidden(hidden)
        with timer.stage("encode"):
            pixels = to_model_input(
                self.normalize(self.stack[indices]), self.letterbox, self.detector.bundle.device,
                self.detector.bundle.dtype,
            )
            vision = self.detector.encode_images(pixels)
            self.encoder_calls += 1
        if self.vision_store is not None:
            with timer.stage("store"):
                self.vision_store.put(indices, vision.last_hidden_state)
        return vision

    # -- the tracker's view ------------------------------------------------------------------------------------
    def keep_tracker_features(self, indices: Sequence[int], vision, tracker, timer: StageTimer) -> None:
        """Compute and store the tracker features of these slices unless they are stored already."""
        indices = list(indices)
        if all(i in self.tracker_store for i in indices):
            return
        with timer.stage("track"):
            feats = tracker.batch_features(vision)
        with timer.stage("store"):
            if self.top_pos is None:
                self.top_pos = feats.top_pos
            self.tracker_store.put(indices, feats.top.transpose(0, 1), *feats.high_res)  # top batch first

    def tracker_features(self, indices: Sequence[int], timer: StageTimer) -> list[SliceFeatures]:
        """Stored tracker features of the slices, one :class:`SliceFeatures` per slice, on the model's device."""
        with timer.stage("store"):
            top, *levels = self.tracker_store.get(list(indices), self.detector.bundle.device)
        return [
            SliceFeatures([level[i : i + 1] for level in levels], top[i][:, None], self.top_pos)
            for i in range(len(indices))
        ]

    def close(self) -> None:
        """Free the stores (a session does this when it ends)."""
        self.tracker_store.close()
        if self.vision_store is not None:
            self.vision_store.close()
