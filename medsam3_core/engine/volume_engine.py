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
       spilled to a temporary file (:mod:`~medsam3_core.engine.feature_store`), so the sweeps never run the ViT or the
       neck again.
    2. **Forward sweep** from the lowest seed slice upwards. Each prompt's objects start on its most confident
       detection's slice (the seed); the memory tracker (:mod:`~medsam3_core.engine.tracker`) propagates all live
       objects of all prompts in one batched call per slice; :func:`~medsam3_core.engine.fusion.fuse_slice` merges them
       with that slice's detections, starts new objects from unmatched confident detections and ends objects that stay
       absent (rule in :mod:`~medsam3_core.engine.fusion`); fused masks go back into each object's memory bank.
    3. **Backward sweep** from the highest seed downwards: every object (seeded or started on the way up) is propagated
       below its first slice from the same conditioning memory. Below its prompt's seed the slice's detections are
       fused as on the way up; between the seed and the object's first slice they were already fused on the way up,
       so there an object that runs into another object of its prompt (≥ half of its mask already theirs) has found
       that object and ends.
    4. **Catch-up**: objects started on the way down are also propagated upwards from their first slice (those
       slices' detections were fused already, so this is propagation only, ending like step 3 when an object runs
       into another of its prompt).

    Objects keep their ids across all sweeps. Slices with no live object and nothing detected are skipped.

Streaming and memory: features exist only for one batch of slices (those of the others wait on disk, in the page
cache, not in the process) and each object keeps a bounded memory bank, so working memory does not grow with the
number of slices. What does grow is the output itself (label map, per-voxel confidence, object ids: 7 bytes per
voxel) and the compact detections.

Output: every object paints ``probability × confidence`` where its probability exceeds 0.5; each voxel goes to the
highest value (the paper's pixel-wise maximum confidence), which resolves overlaps between prompts. Optional clean-up
keeps each object's largest 3D component and fills its holes (3D cavities and per-slice holes).

Progress stages: ``detect`` (pass 1), ``track`` (the sweeps), ``fuse`` (clean-up and assembly). Cancellation is
checked before every batch of slices (encoded, or read back for the tracker), so it takes effect within one batch;
nothing is returned or written after it.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

from medsam3_core.engine.allocator import reuse_freed_memory
from medsam3_core.engine.detector import Detections, Detector, TextFeatures
from medsam3_core.errors import InputError
from medsam3_core.engine.fusion import FusionRule, Track, TrackBook, fuse_slice
from medsam3_core.io.geometry import Volume
from medsam3_core.model.bundle import Sam3Bundle
from medsam3_core.engine.postprocess import MASK_THRESHOLD, fill_holes, instances_for, largest_component
from medsam3_core.engine.preprocess import IntensityNormalizer, slice_stack, to_model_input, unstack
from medsam3_core.plan import ModelLimits, RunPlan, plan_run
from medsam3_core.progress import CancelToken, ProgressCallback, report
from medsam3_core.segmenter import SegmentOptions
from medsam3_core.engine.feature_store import SliceSpill
from medsam3_core.engine.tracker import MemoryTracker, ObjectMemory, SliceFeatures

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
        timings: seconds per stage (``encode``, ``heads``, ``spill``, ``track``, ``fuse``, ``cleanup``, ``total``).
        warnings: what the user should hear about the run itself (an untagged scan windowed as CT, and why).
    """

    labels: np.ndarray
    confidence: np.ndarray
    objects: list[ObjectRecord]
    slice_axis: int
    mode: str
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class _Canvas:
    """Pixel-wise maximum of ``probability × confidence`` over all objects, in slice-stack layout ``(N, H, W)``."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.confidence = np.zeros(shape, np.float32)
        self.owner = np.zeros(shape, np.uint16)

    def paint(self, index: int, prob: np.ndarray, score: float, object_id: int) -> None:
        if object_id > np.iinfo(self.owner.dtype).max:
            self.owner = self.owner.astype(np.int32)
        conf = prob * np.float32(score)
        win = (prob > MASK_THRESHOLD) & (conf > self.confidence[index])
        self.confidence[index][win] = conf[win]
        self.owner[index][win] = object_id

    def covered_by(self, index: int, mask: np.ndarray, owners: set[int]) -> float:
        """Fraction of ``mask`` already owned by any of ``owners`` on slice ``index``."""
        area = int(mask.sum())
        if area == 0 or not owners:
            return 0.0
        return float(np.isin(self.owner[index][mask], list(owners)).sum()) / area


@dataclass
class _StoredDetections:
    """Detections of one prompt on one slice kept for the sweeps: 8-bit probabilities ``(n, h, w)``, scores."""

    probs: np.ndarray
    scores: np.ndarray

    def float_probs(self) -> np.ndarray:
        return self.probs.astype(np.float32) / 255.0


@dataclass
class _Live:
    """A track being propagated in the current sweep: bookkeeping plus its memory bank."""

    track: Track
    memory: ObjectMemory


class VolumeEngine:
    """Segments a :class:`Volume` from text prompts in ``detect`` or ``track`` mode (module docstring).

    Args:
        bundle: the loaded model.
        max_objects: at most this many objects per prompt per slice (detections kept, live tracks).
        rule: fusion thresholds; ``spawn_score``/``keep_score`` follow the run's threshold when left ``None``.
        tracker_factory: ``(bundle, memory_size, num_slices) -> tracker``; :class:`MemoryTracker` unless a test
            scripts the tracker to check the orchestration on its own.
        clock: time source for the per-stage timings.
    """

    def __init__(
        self,
        bundle: Sam3Bundle,
        max_objects: int = 8,
        rule: Optional[FusionRule] = None,
        tracker_factory: Callable[[Sam3Bundle, int, int], MemoryTracker] = MemoryTracker,
        clock: Callable[[], float] = time.perf_counter,
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

    # -- public ----------------------------------------------------------------------------------------------------
    def run(
        self,
        volume: Volume,
        plan: Union[RunPlan, Sequence[str]],
        options: Optional[SegmentOptions] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> EngineResult:
        """Segment ``volume`` as ``plan`` says (label ``k + 1`` = ``plan.concepts[k]``).

        The plan's settings are used as they are (:mod:`medsam3_core.plan` resolved them); given concepts and
        options instead, the plan is made here by the same rule.

        Raises:
            PromptError: no or empty concepts. ModelError: track mode on a checkpoint without tracker.
            Cancelled: ``cancel`` was set (checked before every batch).
        """
        if not isinstance(plan, RunPlan):
            plan = plan_run(plan, options, ModelLimits.of(self.bundle))
        cancel = cancel or CancelToken()
        run = _Run(self, volume, plan, progress, cancel)
        return run.execute()


class _Run:
    """State of one engine run (kept out of :class:`VolumeEngine` so the engine is reusable and thread-safe)."""

    def __init__(
        self,
        engine: VolumeEngine,
        volume: Volume,
        plan: RunPlan,
        progress: Optional[ProgressCallback],
        cancel: CancelToken,
    ) -> None:
        self.engine, self.options, self.progress, self.cancel = engine, plan.options, progress, cancel
        concepts, options = plan.concepts, plan.options
        self.bundle = engine.bundle
        self.timings: dict[str, float] = defaultdict(float)
        t0 = engine.clock()
        self.text: TextFeatures = engine.detector.encode_text(concepts)
        self.timings["text"] += engine.clock() - t0
        self.volume = volume
        self.stack, self.axis = slice_stack(volume, options.slice_axis)
        if self.stack.shape[0] == 0 or min(self.stack.shape[1:3]) == 0:
            raise InputError(f"The volume has an empty dimension {volume.shape}; nothing to segment.")
        self.num_slices = int(self.stack.shape[0])
        self.normalize = IntensityNormalizer.for_volume(volume, plan.window)
        self.letterbox = engine.detector.letterbox(self.stack.shape[1], self.stack.shape[2])
        self.canvas = _Canvas((self.num_slices, int(self.stack.shape[1]), int(self.stack.shape[2])))
        self.threshold = plan.threshold
        self.rule = engine.rule or FusionRule(spawn_score=self.threshold, keep_score=self.threshold)

    # -- top level -------------------------------------------------------------------------------------------------
    def execute(self) -> EngineResult:
        start = self.engine.clock()
        with torch.inference_mode():
            if self.options.mode == "detect":
                objects = self._detect_only()
            else:
                objects = self._detect_and_track()
        report(self.progress, "fuse", 0.0)
        t0 = self.engine.clock()
        if self.options.cleanup:
            self._cleanup(objects)
        self.timings["cleanup"] += self.engine.clock() - t0
        result = self._assemble(objects)
        report(self.progress, "fuse", 1.0)
        self.timings["total"] = self.engine.clock() - start
        result.timings = dict(self.timings)
        result.warnings = [self.normalize.inferred] if self.normalize.inferred else []
        return result

    # -- encoding --------------------------------------------------------------------------------------------------
    def _encode(self, indices: Sequence[int]):
        """One ViT pass over the given slices (cancel checked first: the batch is the cancellation unit)."""
        self.cancel.raise_if_cancelled()
        t0 = self.engine.clock()
        pixels = to_model_input(
            self.normalize(self.stack[list(indices)]), self.letterbox, self.bundle.device, self.bundle.dtype
        )
        vision = self.engine.detector.encode_images(pixels)
        self.timings["encode"] += self.engine.clock() - t0
        return vision

    def _heads(self, vision, top_k: Optional[int] = None) -> Detections:
        """Detector heads; masks only where a detection reaches the run's threshold (the others are discarded)."""
        t0 = self.engine.clock()
        detections = self.engine.detector.detect(vision, self.text, top_k=top_k, min_score=self.threshold)
        self.timings["heads"] += self.engine.clock() - t0
        return detections

    def _batches(self) -> list[list[int]]:
        size = self.options.batch_size
        return [list(range(s, min(s + size, self.num_slices))) for s in range(0, self.num_slices, size)]

    # -- detect mode -----------------------------------------------------------------------------------------------
    def _detect_only(self) -> dict[int, dict[int, float]]:
        """Paint every detection ≥ threshold; returns ``{prompt: {slice: best score}}``."""
        scores: dict[int, dict[int, float]] = {p: {} for p in range(len(self.text))}
        batches = self._batches()
        for done, batch in enumerate(batches):
            report(self.progress, "detect", done / len(batches))
            detections = self._heads(self._encode(batch))
            t0 = self.engine.clock()
            for b, index in enumerate(batch):
                for p in range(len(self.text)):
                    for inst in instances_for(detections, b, p, self.letterbox, self.threshold):
                        self.canvas.paint(index, inst.probability, inst.score, p + 1)
                        scores[p][index] = max(scores[p].get(index, 0.0), inst.score)
            self.timings["fuse"] += self.engine.clock() - t0
        report(self.progress, "detect", 1.0)
        return scores

    # -- track mode: pass 1 ----------------------------------------------------------------------------------------
    def _detect_and_store(self, spill: "_FeatureSpill"):
        """Detection pass: keep compact detections, each prompt's most confident slice; spill tracker features."""
        stored: dict[int, dict[int, _StoredDetections]] = defaultdict(dict)  # slice -> prompt -> detections
        best: dict[int, tuple[float, int]] = {}  # prompt -> (score, slice)
        batches = self._batches()
        k = self.engine.max_objects
        for done, batch in enumerate(batches):
            report(self.progress, "detect", done / len(batches))
            vision = self._encode(batch)
            spill.put(batch, vision)  # the sweeps read them back instead of re-running the ViT and the neck
            detections = self._heads(vision, top_k=k)  # only the kept detections' masks are computed
            for b, index in enumerate(batch):
                for p in range(len(self.text)):
                    kept = self._keep(detections, b, p, k)
                    if kept is None:
                        continue
                    stored[index][p] = kept
                    top = float(kept.scores[0])
                    if top > best.get(p, (-1.0, -1))[0]:
                        best[p] = (top, index)
        report(self.progress, "detect", 1.0)
        return stored, {p: s for p, (_, s) in best.items()}

    def _keep(self, detections: Detections, b: int, p: int, k: int) -> Optional[_StoredDetections]:
        scores = detections.scores[b, p]
        order = torch.argsort(scores, descending=True, stable=True)[:k]
        order = order[scores[order] >= self.threshold]
        if order.numel() == 0:
            return None
        probs = detections.mask_logits[b, p, order].float().sigmoid()
        nonempty = (probs > MASK_THRESHOLD).flatten(1).any(dim=1)
        if not bool(nonempty.any()):
            return None
        probs, order = probs[nonempty], order[nonempty]
        quantized = (probs * 255.0).round().to(torch.uint8).numpy()
        return _StoredDetections(quantized, scores[order].numpy().astype(np.float32))

    # -- track mode: sweeps ----------------------------------------------------------------------------------------
    def _detect_and_track(self) -> list[Track]:
        tracker = self.engine.tracker_factory(self.bundle, self.options.memory_size, self.num_slices)
        with _FeatureSpill(self, tracker) as spill:
            stored, seeds = self._detect_and_store(spill)
            book = TrackBook(self.rule.patience)
            if not seeds:
                return book.tracks
            plan = _SweepPlan(self.num_slices, seeds)
            sweep = _Sweep(self, tracker, book, stored, seeds, spill, plan)
            sweep.forward()
            sweep.backward()
            sweep.catch_up()
        report(self.progress, "track", 1.0)
        return book.tracks

    # -- output ----------------------------------------------------------------------------------------------------
    def _cleanup(self, objects) -> None:
        """Largest 3D component per object, then fill its holes (3D cavities and per-slice holes)."""
        owner, confidence = self.canvas.owner, self.canvas.confidence
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

    def _assemble(self, objects) -> EngineResult:
        owner = self.canvas.owner
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
        dtype = np.uint8 if len(self.text) < 256 else np.uint16
        labels = lut[owner].astype(dtype)
        labels = np.ascontiguousarray(unstack(labels, self.axis))
        confidence = np.ascontiguousarray(unstack(self.canvas.confidence, self.axis))
        return EngineResult(labels, confidence, records, self.axis, self.options.mode)


@dataclass
class _SweepPlan:
    """Where the two sweeps start, and how many slices they may visit (for progress)."""

    num_slices: int
    seeds: dict[int, int]

    @property
    def forward_start(self) -> int:
        return min(self.seeds.values())

    @property
    def total(self) -> int:
        return (self.num_slices - self.forward_start) + max(self.seeds.values())


class _Sweep:
    """Both propagation sweeps of one run (module docstring, steps 2 and 3)."""

    def __init__(self, run: _Run, tracker, book, stored, seeds, spill: "_FeatureSpill", plan: _SweepPlan) -> None:
        self.run, self.tracker, self.book = run, tracker, book
        self.stored: dict[int, dict[int, _StoredDetections]] = stored
        self.seeds: dict[int, int] = seeds
        self.spill = spill
        self.plan = plan
        self.features: dict[int, SliceFeatures] = {}
        self.memories: dict[int, ObjectMemory] = {}
        self.spawned_down: list[Track] = []  # objects started in the backward sweep (see catch_up)
        self.catching_up = False
        self.visited = 0
        self.grid = tracker.mask_grid  # the low-res mask grid shared by detector and tracker

    # -- the two directions ----------------------------------------------------------------------------------------
    def forward(self) -> None:
        live: list[_Live] = []
        for index in range(self.plan.forward_start, self.run.num_slices):
            eligible = [p for p, s in self.seeds.items() if s <= index]
            if not live and not any(p in self.stored.get(index, {}) for p in eligible):
                continue
            self._step(index, live, eligible, direction=1)

    def backward(self) -> None:
        starts: dict[int, list[Track]] = defaultdict(list)
        for track in self.book.tracks:
            starts[track.seed_slice - 1].append(track)
        live: list[_Live] = []
        top = max([s for s in starts] + [s - 1 for s in self.seeds.values()])
        for index in range(top, -1, -1):
            for track in starts.pop(index, []):
                self.book.resume_from_seed(track)
                memory = self.memories[track.track_id]
                memory.turn()
                live.append(_Live(track, memory))
            eligible = [p for p, s in self.seeds.items() if s > index]
            if not live and not any(p in self.stored.get(index, {}) for p in eligible):
                continue
            self._step(index, live, eligible, direction=-1)

    def catch_up(self) -> None:
        """Objects started on the way down are propagated upwards from their first slice too.

        The slices above were fused with their detections already, so this is propagation only (no detections, no
        new objects); an object that runs into another object of its prompt has found it and ends (``_merged``).
        """
        starts: dict[int, list[Track]] = defaultdict(list)
        for track in self.spawned_down:
            starts[track.seed_slice + 1].append(track)
        live: list[_Live] = []
        self.catching_up = True
        for index in range(min(starts, default=self.run.num_slices), self.run.num_slices):
            for track in starts.pop(index, []):
                self.book.resume_from_seed(track)
                memory = self.memories[track.track_id]
                memory.turn()
                live.append(_Live(track, memory))
            if not live and not starts:
                break
            if live:
                self._step(index, live, [], direction=1)

    # -- one slice ------------------------------------------------------------------------------------------------
    def _step(self, index: int, live: list[_Live], eligible: list[int], direction: int) -> None:
        """Propagate, fuse, start and end objects on one slice; ``live`` is updated in place."""
        run = self.run
        self.visited += 1
        report(run.progress, "track", self.visited / max(self.plan.total, 1))
        feats = self._features(index, direction)
        t0 = run.engine.clock()
        step = self.tracker.propagate(feats, [item.memory for item in live], index)
        run.timings["track"] += run.engine.clock() - t0

        t0 = run.engine.clock()
        track_probs = step.mask_logits.float().sigmoid().cpu().numpy() if live else None
        presence = step.score_logits.float().sigmoid().cpu().numpy() if live else None
        fused_logits = step.mask_logits.clone() if live else None
        present = np.zeros(len(live), dtype=bool)
        spawns: list[tuple[int, np.ndarray, float]] = []
        by_prompt: dict[int, list[int]] = defaultdict(list)
        for row, item in enumerate(live):
            by_prompt[item.track.prompt].append(row)
        slice_dets = self.stored.get(index, {})
        for p in sorted(set(by_prompt) | {p for p in eligible if p in slice_dets}):
            rows = by_prompt.get(p, [])
            dets = slice_dets.get(p) if p in eligible else None
            det_probs = dets.float_probs() if dets is not None else np.zeros((0,) + self.grid, np.float32)
            det_scores = dets.scores if dets is not None else np.zeros(0, np.float32)
            fusion = fuse_slice(
                track_probs[rows] if rows else np.zeros((0,) + det_probs.shape[1:], np.float32),
                presence[rows] if rows else np.zeros(0, np.float32),
                [live[r].track.confidence for r in rows],
                det_probs,
                det_scores,
                run.rule,
            )
            changed = set(fusion.matches) | set(fusion.absorbed.values())
            for j, row in enumerate(rows):
                item = live[row]
                present[row] = bool(fusion.present[j]) and not self._merged(index, item, fusion.probs[j], direction)
                self.book.record(item.track, index, float(fusion.scores[j]), present[row])
                if j in changed:
                    fused_logits[row] = torch.from_numpy(_logit(fusion.probs[j])).to(fused_logits)
            room = max(run.engine.max_objects - len([r for r in rows if live[r].track.active]), 0)
            spawns += [
                (p, fusion.spawn_probs[n], float(det_scores[d])) for n, d in enumerate(fusion.spawn[:room])
            ]
        run.timings["fuse"] += run.engine.clock() - t0

        t0 = run.engine.clock()
        if live:
            self.tracker.remember(
                feats, [item.memory for item in live], index, fused_logits, torch.from_numpy(present), step.pointers
            )
        new_items = self._spawn(feats, index, spawns)
        if direction < 0:
            self.spawned_down += [item.track for item in new_items]
        run.timings["track"] += run.engine.clock() - t0

        t0 = run.engine.clock()
        painted = [
            (item.track, fused_logits[row].float().sigmoid().cpu()) for row, item in enumerate(live) if present[row]
        ]
        painted += [(item.track, torch.from_numpy(prob)) for item, (_, prob, _) in zip(new_items, spawns)]
        if painted:
            originals = run.letterbox.to_original(torch.stack([prob for _, prob in painted]), mode="bilinear").numpy()
            for (track, _), prob in zip(painted, originals):
                run.canvas.paint(index, prob, track.slice_scores[index], track.track_id)
        for item in live:
            if not item.track.active:
                item.memory.turn()  # an ended object keeps only its seed memory (for the other direction)
        live[:] = [item for item in live if item.track.active] + new_items
        run.timings["fuse"] += run.engine.clock() - t0

    def _merged(self, index: int, item: _Live, prob: np.ndarray, direction: int) -> bool:
        """Backward above the prompt's seed, or catching up: has this object run into another object of its prompt
        (module docstring)?"""
        if not self.catching_up and (direction > 0 or index < self.seeds[item.track.prompt]):
            return False
        mask = self.run.letterbox.to_original(torch.from_numpy(prob)[None], mode="bilinear")[0].numpy() > 0.5
        others = {t.track_id for t in self.book.tracks if t.prompt == item.track.prompt and t is not item.track}
        if self.run.canvas.covered_by(index, mask, others) >= self.run.rule.absorb_fraction:
            item.track.active = False
            return True
        return False

    def _spawn(self, feats: SliceFeatures, index: int, spawns: list) -> list[_Live]:
        if not spawns:
            return []
        masks = torch.from_numpy(np.stack([prob > MASK_THRESHOLD for _, prob, _ in spawns]))
        memories = self.tracker.seed(feats, masks.to(feats.top.device), index)
        items = []
        for (prompt, _, score), memory in zip(spawns, memories):
            track = self.book.start(prompt, index, score)
            self.memories[track.track_id] = memory
            items.append(_Live(track, memory))
        return items

    # -- streaming features ----------------------------------------------------------------------------------------
    def _features(self, index: int, direction: int) -> SliceFeatures:
        """Tracker features of a slice, read back for a window of ``batch_size`` slices from the spill."""
        if index not in self.features:
            self.run.cancel.raise_if_cancelled()  # a window is the sweeps' batch, so also their cancellation unit
            self.features.clear()
            end = index + direction * self.run.options.batch_size
            window = [i for i in range(index, end, direction) if 0 <= i < self.run.num_slices]
            self.features.update(zip(window, self.spill.get(window)))
        return self.features[index]


class _FeatureSpill:
    """Each slice's tracker features (the tracker neck on the ViT output), computed in the detection pass and kept in
    a :class:`~medsam3_core.engine.feature_store.SliceSpill` until the sweeps need them. The top level's position
    encoding depends only on the grid, so one copy is kept in memory for all slices."""

    def __init__(self, run: _Run, tracker: MemoryTracker) -> None:
        self.run, self.tracker = run, tracker
        self.store = SliceSpill(run.num_slices)
        self.top_pos: Optional[torch.Tensor] = None

    def put(self, indices: list[int], vision) -> None:
        t0 = self.run.engine.clock()
        feats = self.tracker.batch_features(vision)
        self.run.timings["track"] += self.run.engine.clock() - t0
        t0 = self.run.engine.clock()
        if self.top_pos is None:
            self.top_pos = feats.top_pos
        self.store.put(indices, feats.top.transpose(0, 1), *feats.high_res)  # top batch first: (B, h*w, C)
        self.run.timings["spill"] += self.run.engine.clock() - t0

    def get(self, indices: list[int]) -> list[SliceFeatures]:
        t0 = self.run.engine.clock()
        top, *levels = self.store.get(indices, self.run.bundle.device)
        self.run.timings["spill"] += self.run.engine.clock() - t0
        return [
            SliceFeatures([level[i : i + 1] for level in levels], top[i][:, None], self.top_pos)
            for i in range(len(indices))
        ]

    def __enter__(self) -> "_FeatureSpill":
        return self

    def __exit__(self, *exc) -> None:
        self.store.close()


def _logit(prob: np.ndarray) -> np.ndarray:
    clipped = np.clip(prob, 1e-4, 1 - 1e-4)
    return np.log(clipped / (1 - clipped)).astype(np.float32)
