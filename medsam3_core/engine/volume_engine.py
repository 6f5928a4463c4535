"""The volume engine: text-prompted SAM3 over every slice, objects tracked through the memory bank, fused.

Two modes (``SegmentOptions.mode``):

``detect``
    One streaming pass. Each batch of slices is encoded once (ViT), every prompt's detector heads run on it in one
    batched call (text encoded once per prompt per run), and every detection at or above the threshold is painted
    into the output. Slice by slice this is exactly the 2D detector; objects have no 3D identity (one object per
    prompt). Kept for ablation and for checkpoints without a tracker.

``track`` (default)
    1. **Detection pass** as above, but detections are *kept* compactly (at most ``max_objects`` per prompt per slice,
       as 8-bit probability maps on the model's low-res grid — a fraction of the size of the output label map), only
       those detections' masks are computed (:mod:`~medsam3_core.engine.heads`), and each slice's tracker features are
       kept in the volume's feature store (device → pinned host memory → temporary file,
       :mod:`~medsam3_core.engine.feature_store`), so the sweeps never run the ViT or the neck again
       (:mod:`~medsam3_core.engine.detection_pass`).
    2. **Forward sweep** from the lowest seed slice upwards. Each prompt's objects start on its most confident
       detection's slice (the seed); the memory tracker (:mod:`~medsam3_core.engine.tracker`) propagates all live
       objects of all prompts in one batched call per slice; :func:`~medsam3_core.engine.fusion.fuse_slice` merges
       them with that slice's detections, starts new objects from unmatched confident detections and ends objects
       that stay absent (rule in :mod:`~medsam3_core.engine.fusion`); fused masks go back into each object's memory bank
       (:mod:`~medsam3_core.engine.sweeps`).
    3. **Backward sweep** from the highest seed downwards: every object (seeded or started on the way up) is propagated
       below its first slice from the same conditioning memory. Below its prompt's seed the slice's detections are
       fused as on the way up; between the seed and the object's first slice they were already fused on the way up,
       so there an object that runs into another object of its prompt (≥ half of its mask already theirs) has found
       that object and ends.
    4. **Catch-up**: objects started on the way down are also propagated upwards from their first slice (those
       slices' detections were fused already, so this is propagation only, ending like step 3 when an object runs
       into another of its prompt).
    5. **Confirmation** (rule 6 of :mod:`~medsam3_core.engine.fusion`), applied during the sweeps: a slice where the
       tracker carries an object without a detection is painted only if a later detection of the object confirms
       the gap (or it lies within ``extend_slices`` of one), and an object ends after ``keep_alive`` such slices.
       After the sweeps, an object that detections support on fewer than ``min_detections`` slices is taken out.

    Objects keep their ids across all sweeps. Slices with no live object and nothing detected are skipped.

Streaming and memory: on the CPU, features exist only for one batch of slices (those of the others wait on disk, in
the page cache, not in the process) and each object keeps a bounded memory bank, so working memory does not grow
with the number of slices; on a GPU the store keeps them on the device while they fit in its budget. What does grow
is the output itself (per-voxel confidence and object ids, 6 bytes per voxel on the device, one copy to the host at
the end) and the compact detections. Slices per batch follow the device's free memory, halving on out-of-memory
(:mod:`~medsam3_core.engine.batching`).

Volume sessions (:mod:`~medsam3_core.engine.session`) keep the volume's encoding
(:mod:`~medsam3_core.engine.encoded_volume`) between runs: a new prompt on the same volume runs the text encoder, the
heads and the tracker, never the ViT again.

Output: every object paints ``probability × confidence`` where its probability exceeds 0.5; each voxel goes to the
highest value (the paper's pixel-wise maximum confidence), which resolves overlaps between prompts
(:mod:`~medsam3_core.engine.canvas`). Optional clean-up
keeps each object's largest 3D component and fills its holes (3D cavities and per-slice holes).

Progress stages: ``detect`` (pass 1), ``track`` (the sweeps), ``fuse`` (clean-up and assembly). Cancellation is
checked before every batch of slices (encoded, or read back for the tracker), so it takes effect within one batch;
nothing is returned or written after it. Timings: seconds per stage that add up to ``total``
(:mod:`~medsam3_core.engine.timing`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from medsam3_core.engine.allocator import reuse_freed_memory
from medsam3_core.engine.canvas import Canvas
from medsam3_core.engine.detection_pass import detect_and_store, detect_only
from medsam3_core.engine.detector import Detector
from medsam3_core.engine.encoded_volume import EncodedVolume
from medsam3_core.engine.feature_store import StoreBudget
from medsam3_core.engine.fusion import FusionRule, TrackBook
from medsam3_core.engine.postprocess import fill_holes, largest_component
from medsam3_core.engine.preprocess import unstack
from medsam3_core.engine.run_context import RunContext
from medsam3_core.engine.sweeps import Sweep
from medsam3_core.engine.timing import StageTimer
from medsam3_core.engine.tracker import MemoryTracker
from medsam3_core.io.geometry import Volume
from medsam3_core.model.bundle import Sam3Bundle
from medsam3_core.plan import ModelLimits, RunPlan, plan_run
from medsam3_core.progress import CancelToken, ProgressCallback, report
from medsam3_core.segmenter import SegmentOptions

__all__ = ["EngineResult", "ObjectRecord", "VolumeEngine"]

@dataclass
class ObjectRecord:
    """One object of the result: id, prompt index, voxels in the output, confidence per slice (slice-axis index)."""

    object_id: int
    prompt: int
    voxels: int
    slice_scores: dict[int, float]

    @property
    def score(self) -> float:
        return max(self.slice_scores.values(), default=0.0)

    @property
    def slice_range(self) -> Optional[tuple[int, int]]:
        return (min(self.slice_scores), max(self.slice_scores)) if self.slice_scores else None


@dataclass
class EngineResult:
    """Engine output on the input grid (``[k, j, i]`` like ``Volume.array``).

    Attributes:
        labels: label ``p + 1`` for prompt ``p``, 0 background (uint8, uint16 beyond 255 prompts).
        confidence: float32 per-voxel confidence (0 on background).
        objects: objects with at least one voxel, by id.
        slice_axis: array axis that was sliced (slice indices in ``objects`` count along it).
        mode: the mode that ran.
        timings: seconds per stage (``text``, ``encode``, ``heads``, ``store``, ``track``, ``fuse``, ``cleanup``,
            ``other``), which add up to ``total`` (:mod:`~medsam3_core.engine.timing`).
        notes: what the report should say about how the run read the scan or adapted (an untagged scan windowed as
            CT and why, a lowered batch size).
        encoder_calls: ViT passes (batches of slices) this run needed; 0 when a session had them all.
    """

    labels: np.ndarray
    confidence: np.ndarray
    objects: list[ObjectRecord]
    slice_axis: int
    mode: str
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    encoder_calls: int = 0


class VolumeEngine:
    """Segments a :class:`Volume` from text prompts in ``detect`` or ``track`` mode (module docstring).

    Args:
        bundle: the loaded model.
        max_objects: at most this many objects per prompt per slice (detections kept, live tracks).
        rule: fusion thresholds; ``spawn_score``/``keep_score`` follow the run's threshold when left ``None``.
        tracker_factory: ``(bundle, memory_size, num_slices) -> tracker``; :class:`MemoryTracker` unless a test
            scripts the tracker to check the orchestration on its own.
        clock: host time source for the per-stage timings (CUDA runs time on the device, see ``timing``).
        store_budget: bytes the feature stores may keep on the device and in host memory;
            :meth:`StoreBudget.for_device` (measured when each volume is encoded) when ``None``.
    """

    def __init__(
        self,
        bundle: Sam3Bundle,
        max_objects: int = 8,
        rule: Optional[FusionRule] = None,
        tracker_factory: Callable[[Sam3Bundle, int, int], MemoryTracker] = MemoryTracker,
        clock: Callable[[], float] = time.perf_counter,
        store_budget: Optional[StoreBudget] = None,
    ) -> None:
        if max_objects < 1:
            raise ValueError("max_objects must be at least 1")
        reuse_freed_memory()  # batches free and re-allocate large tensors at every step (allocator.py)
        self.bundle = bundle
        self.detector = Detector(bundle)
        self.max_objects = max_objects
        self.rule = rule
        self.tracker_factory = tracker_factory
        self.clock = clock
        self.store_budget = store_budget

    # -- public ----------------------------------------------------------------------------------------------------
    def run(
        self,
        volume: Volume,
        plan: Union[RunPlan, Sequence[str]],
        options: Optional[SegmentOptions] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        encoded: Optional[EncodedVolume] = None,
    ) -> EngineResult:
        """Segment ``volume`` as ``plan`` says (label ``k + 1`` = ``plan.concepts[k]``).

        The plan's settings are used as they are (:mod:`medsam3_core.plan` resolved them); given concepts and
        options instead, the plan is made here by the same rule.

        ``encoded`` is a volume session's encoding of ``volume`` under the same window and slice axis
        (:mod:`~medsam3_core.engine.session`); the run reuses and extends it instead of encoding the volume anew.

        Raises:
            PromptError: no or empty concepts. ModelError: track mode on a checkpoint without tracker.
            Cancelled: ``cancel`` was set (checked before every batch).
        """
        if not isinstance(plan, RunPlan):
            plan = plan_run(plan, options, ModelLimits.of(self.bundle))
        cancel = cancel or CancelToken()
        timer = StageTimer(self.bundle.device, self.clock)
        own = encoded is None
        if own:
            encoded = self.encode(volume, plan.options)
        try:
            run = _Run(self, encoded, plan, progress, cancel, timer)
            return run.execute()
        finally:
            if own:
                encoded.close()

    def encode(self, volume: Volume, options: SegmentOptions, keep_vision: bool = False) -> EncodedVolume:
        """The volume prepared under ``options``' window and slice axis (features are filled by runs)."""
        return EncodedVolume(self.detector, volume, options.window, options.slice_axis, keep_vision,
                             self.store_budget)


class _Run:
    """One engine run: resolves the run's settings once into a :class:`RunContext`, runs the passes on it, and
    assembles the result (kept out of :class:`VolumeEngine` so the engine is reusable and thread-safe)."""

    def __init__(
        self,
        engine: VolumeEngine,
        encoded: EncodedVolume,
        plan: RunPlan,
        progress: Optional[ProgressCallback],
        cancel: CancelToken,
        timer: StageTimer,
    ) -> None:
        concepts, options = plan.concepts, plan.options
        self.engine, self.options, self.progress = engine, options, progress
        self.bundle = engine.bundle
        self.encoder_calls_before = encoded.encoder_calls
        self.unconfirmed: dict[int, list[int]] = {}  # rule 6 of the fusion: slices taken out per object id
        with timer.stage("text"):
            text = engine.detector.encode_text(concepts)
        stack = encoded.stack
        threshold = plan.threshold
        self.ctx = RunContext(
            bundle=self.bundle,
            detector=engine.detector,
            text=text,
            encoded=encoded,
            canvas=Canvas((encoded.num_slices, int(stack.shape[1]), int(stack.shape[2])), self.bundle.device),
            threshold=threshold,
            rule=engine.rule or FusionRule(spawn_score=threshold, keep_score=threshold),
            max_objects=engine.max_objects,
            batch_size=options.batch_size,
            memory_size=options.memory_size,
            timer=timer,
            progress=progress,
            cancel=cancel,
        )

    # -- top level -------------------------------------------------------------------------------------------------
    def execute(self) -> EngineResult:
        ctx = self.ctx
        with torch.inference_mode():
            if self.options.mode == "detect":
                objects = detect_only(ctx)
            else:
                objects = self._detect_and_track()
        report(self.progress, "fuse", 0.0)
        with ctx.timer.stage("fuse"):
            owner, confidence = ctx.canvas.to_host()  # the one copy of the output to the host
            _clear_slices(owner, confidence, self.unconfirmed)
        with ctx.timer.stage("cleanup"):
            if self.options.cleanup:
                self._cleanup(owner, confidence)
        with ctx.timer.stage("fuse"):
            result = self._assemble(objects, owner, confidence)
        report(self.progress, "fuse", 1.0)
        result.timings = ctx.timer.totals()
        inferred = ctx.encoded.normalize.inferred  # e.g. an untagged scan windowed as CT, and why
        result.notes = ([inferred] if inferred else []) + list(ctx.notes)
        result.encoder_calls = ctx.encoded.encoder_calls - self.encoder_calls_before
        return result

    def _detect_and_track(self):
        ctx = self.ctx
        tracker = self.engine.tracker_factory(self.bundle, ctx.memory_size, ctx.num_slices)
        stored, seeds = detect_and_store(ctx, tracker)
        book = TrackBook(ctx.rule.patience)
        if not seeds:
            return book.tracks
        sweep = Sweep(ctx, tracker, book, stored, seeds)
        sweep.forward()
        sweep.backward()
        sweep.catch_up()
        self.unconfirmed = book.unconfirmed_slices(ctx.rule, ctx.num_slices)
        report(self.progress, "track", 1.0)
        return book.tracks

    # -- output ----------------------------------------------------------------------------------------------------
    def _cleanup(self, owner: np.ndarray, confidence: np.ndarray) -> None:
        """Largest 3D component per object, then fill its holes (3D cavities and per-slice holes)."""
        ids = [int(i) for i in np.unique(owner) if i]
        for done, object_id in enumerate(ids):
            report(self.progress, "fuse", 0.5 * done / max(len(ids), 1))
            mask = owner == object_id
            kept = largest_component(mask)
            dropped = mask & ~kept
            owner[dropped], confidence[dropped] = 0, 0.0
            filled = fill_holes(fill_holes(kept), axis=0) & ~kept & (owner == 0)
            if filled.any():
                owner[filled] = object_id
                confidence[filled] = float(confidence[kept].min())

    def _assemble(self, objects, owner: np.ndarray, confidence: np.ndarray) -> EngineResult:
        counts = np.bincount(owner.ravel())
        if isinstance(objects, dict):  # detect mode: one object per prompt, id = label
            records = [
                ObjectRecord(p + 1, p, int(counts[p + 1]) if p + 1 < len(counts) else 0, scores)
                for p, scores in objects.items()
            ]
            lut = np.arange(len(counts), dtype=np.int64)
        else:
            records = [
                ObjectRecord(t.track_id, t.prompt, int(counts[t.track_id]) if t.track_id < len(counts) else 0,
                             dict(sorted(t.slice_scores.items())))
                for t in objects
            ]
            lut = np.zeros(max(len(counts), len(objects) + 1), dtype=np.int64)
            for t in objects:
                lut[t.track_id] = t.prompt + 1
        records = [r for r in records if r.voxels > 0]
        dtype = np.uint8 if len(self.ctx.text) < 256 else np.uint16
        axis = self.ctx.encoded.axis
        labels = np.ascontiguousarray(unstack(lut[owner].astype(dtype), axis))
        confidence = np.ascontiguousarray(unstack(confidence, axis))
        return EngineResult(labels, confidence, records, axis, self.options.mode)


def _clear_slices(owner: np.ndarray, confidence: np.ndarray, slices_by_id: dict[int, list[int]]) -> None:
    """Take objects out of the given slices of the output (fusion rule 6, after the sweeps). A voxel that another
    object had lost to the removed one stays empty: the canvas keeps only the winner of each voxel."""
    for object_id, slices in slices_by_id.items():
        for k in slices:
            where = owner[k] == object_id
            owner[k][where] = 0
            confidence[k][where] = 0.0

