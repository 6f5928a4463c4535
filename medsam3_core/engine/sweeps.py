"""Passes 2–4 of track mode: the forward sweep, the backward sweep and the catch-up (algorithm in
:mod:`~medsam3_core.engine.volume_engine`).

On every visited slice, :meth:`Sweep._step` propagates all live objects of all prompts in one tracker call, fuses
each prompt's objects with the slice's stored detections (:func:`~medsam3_core.engine.fusion.fuse_slice`), writes the
fused masks into the objects' memory banks, seeds new objects and paints every present object into the canvas in one
call. Masks, probabilities and the canvas stay on the engine's device; the host sees per-object scores and decisions.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch

from medsam3_core.engine.detection_pass import StoredDetections
from medsam3_core.engine.fusion import Track, TrackBook, fuse_slice
from medsam3_core.engine.postprocess import MASK_THRESHOLD
from medsam3_core.engine.run_context import RunContext
from medsam3_core.engine.tracker import ObjectMemory, SliceFeatures
from medsam3_core.progress import report

__all__ = ["Sweep", "SweepPlan"]


@dataclass
class SweepPlan:
    """Where the two sweeps start, and how many slices they may visit (for progress)."""

    num_slices: int
    seeds: dict[int, int]

    @property
    def forward_start(self) -> int:
        return min(self.seeds.values())

    @property
    def total(self) -> int:
        return (self.num_slices - self.forward_start) + max(self.seeds.values())


@dataclass
class _Live:
    """A track being propagated in the current sweep: bookkeeping, its memory bank, and the tracker-only slices
    held back from the canvas (fusion rule 6: painted once a later detection confirms the gap, dropped otherwise)."""

    track: Track
    memory: ObjectMemory
    since_detection: int = 0
    held: list = field(default_factory=list)  # [(slice, fused logits on the low-res grid, score)]


class Sweep:
    """Both propagation sweeps and the catch-up of one run (module docstring of the engine, steps 2–4)."""

    def __init__(self, ctx: RunContext, tracker, book: TrackBook,
                 stored: dict[int, dict[int, StoredDetections]], seeds: dict[int, int]) -> None:
        self.ctx, self.tracker, self.book = ctx, tracker, book
        self.stored = stored
        self.seeds = seeds
        self.plan = SweepPlan(ctx.num_slices, seeds)
        self.features: dict[int, SliceFeatures] = {}
        self.memories: dict[int, ObjectMemory] = {}
        self.spawned_down: list[Track] = []  # objects started in the backward sweep (see catch_up)
        self.catching_up = False
        self.visited = 0
        self.grid = tracker.mask_grid  # the low-res mask grid shared by detector and tracker

    # -- the directions ------------------------------------------------------------------------------------------
    def forward(self) -> None:
        live: list[_Live] = []
        for index in range(self.plan.forward_start, self.ctx.num_slices):
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
            live += self._resume(starts.pop(index, []))
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
        for index in range(min(starts, default=self.ctx.num_slices), self.ctx.num_slices):
            live += self._resume(starts.pop(index, []))
            if not live and not starts:
                break
            if live:
                self._step(index, live, [], direction=1)

    def _resume(self, tracks: list[Track]) -> list[_Live]:
        """Tracks starting the other direction from their seed slice (a new :class:`_Live`: nothing held back)."""
        items = []
        for track in tracks:
            self.book.resume_from_seed(track)
            memory = self.memories[track.track_id]
            memory.turn()
            items.append(_Live(track, memory))
        return items

    # -- one slice -----------------------------------------------------------------------------------------------
    def _step(self, index: int, live: list[_Live], eligible: list[int], direction: int) -> None:
        """Propagate, fuse, start and end objects on one slice; ``live`` is updated in place."""
        ctx, timer = self.ctx, self.ctx.timer
        self.visited += 1
        report(ctx.progress, "track", self.visited / max(self.plan.total, 1))
        feats = self._features(index, direction)
        with timer.stage("track"):
            step = self.tracker.propagate(feats, [item.memory for item in live], index)

        with timer.stage("fuse"):
            present, detected, fused_logits, spawns = self._fuse(index, live, eligible, direction, step)

        with timer.stage("track"):
            if live:
                self.tracker.remember(
                    feats, [item.memory for item in live], index, fused_logits, present, step.pointers
                )
            new_items = self._spawn(feats, index, spawns)
            if direction < 0:
                self.spawned_down += [item.track for item in new_items]

        with timer.stage("fuse"):
            rows = self._rows_to_paint(index, live, present, detected, fused_logits)
            probs = [fused_logits[rows].float().sigmoid()] if rows else []
            probs += [prob[None] for _, prob, _ in spawns]
            if probs:
                painted = [live[row].track for row in rows] + [item.track for item in new_items]
                originals = ctx.letterbox.to_original(torch.cat(probs), mode="bilinear")
                ctx.canvas.paint(index, originals, [t.slice_scores[index] for t in painted],
                                 [t.track_id for t in painted])
            for item in live:
                if not item.track.active:
                    item.memory.turn()  # an ended object keeps only its seed memory (for the other direction)
            live[:] = [item for item in live if item.track.active] + new_items

    def _rows_to_paint(self, index: int, live: list[_Live], present: torch.Tensor, detected: torch.Tensor,
                       fused_logits) -> list[int]:
        """Rows of ``live`` to paint on this slice now (fusion rule 6 applied as the sweep goes).

        A present object that a detection supports is painted, and so are the tracker-only slices it had held back
        since its previous detection (a gap the tracker bridged). A tracker-only slice is painted at once while it is
        within ``extend_slices`` of the object's last detection in this sweep; further ones are held back until a
        detection confirms them, so an object the tracker carries past the organ's end never reaches the canvas and
        cannot cover another object's voxels there."""
        limit, keep_alive = self.ctx.rule.extend_slices, self.ctx.rule.keep_alive
        rows = []
        for row, item in enumerate(live):
            if not present[row]:
                continue
            if detected[row]:
                self._release(item)
                rows.append(row)
                continue
            item.since_detection += 1
            if keep_alive is not None and item.since_detection > keep_alive:
                item.track.active = False  # drifted off: ends here, and what it held back is dropped
                item.track.slice_scores.pop(index, None)
                item.held.clear()
            elif limit is None or item.since_detection <= limit:
                rows.append(row)
            else:
                item.held.append((index, fused_logits[row].clone(), item.track.slice_scores[index]))
        return rows

    def _release(self, item: _Live) -> None:
        """Paint the slices ``item`` held back: a detection has confirmed the gap they bridge."""
        for k, logits, score in item.held:
            original = self.ctx.letterbox.to_original(logits.float().sigmoid()[None], mode="bilinear")
            self.ctx.canvas.paint(k, original, [score], [item.track.track_id])
        item.held.clear()
        item.since_detection = 0

    def _fuse(self, index: int, live: list[_Live], eligible: list[int], direction: int, step):
        """Fusion of every prompt on the slice: per-object presence and detection support (host), fused logits
        (device), and the detections that start new objects ``[(prompt, probability, score)]``."""
        ctx = self.ctx
        track_probs = step.mask_logits.float().sigmoid() if live else None
        presence = step.score_logits.float().sigmoid().cpu() if live else None
        fused_logits = step.mask_logits.clone() if live else None
        present = torch.zeros(len(live), dtype=torch.bool)
        detected = torch.zeros(len(live), dtype=torch.bool)
        spawns: list[tuple[int, torch.Tensor, float]] = []
        by_prompt: dict[int, list[int]] = defaultdict(list)
        for row, item in enumerate(live):
            by_prompt[item.track.prompt].append(row)
        slice_dets = self.stored.get(index, {})
        device = ctx.bundle.device
        for p in sorted(set(by_prompt) | {p for p in eligible if p in slice_dets}):
            rows = by_prompt.get(p, [])
            dets = slice_dets.get(p) if p in eligible else None
            det_probs = dets.float_probs() if dets is not None else torch.zeros((0, *self.grid), device=device)
            det_scores = dets.scores if dets is not None else torch.zeros(0)
            row_index = torch.tensor(rows, dtype=torch.long)
            fusion = fuse_slice(
                track_probs[row_index.to(track_probs.device)] if rows else det_probs.new_zeros((0, *self.grid)),
                presence[row_index] if rows else torch.zeros(0),
                [live[r].track.confidence for r in rows],
                det_probs,
                det_scores,
                ctx.rule,
            )
            changed = sorted(set(fusion.matches) | set(fusion.absorbed.values()))
            for j, (row, on_slice, score) in enumerate(zip(rows, fusion.present.tolist(), fusion.scores.tolist())):
                item = live[row]
                here = on_slice and not self._merged(index, item, fusion.probs[j], direction)
                present[row] = here
                detected[row] = here and j in changed
                self.book.record(item.track, index, score, here, detected=j in changed)
            if changed:
                targets = torch.tensor([rows[j] for j in changed], device=fused_logits.device)
                logits = _logit(fusion.probs[torch.tensor(changed, device=fusion.probs.device)])
                fused_logits[targets] = logits.to(fused_logits)
            room = max(ctx.max_objects - len([r for r in rows if live[r].track.active]), 0)
            spawns += [
                (p, fusion.spawn_probs[n], float(det_scores[d])) for n, d in enumerate(fusion.spawn[:room])
            ]
        return present, detected, fused_logits, spawns

    def _merged(self, index: int, item: _Live, prob: torch.Tensor, direction: int) -> bool:
        """Backward above the prompt's seed, or catching up: has this object run into another object of its prompt
        (module docstring of the engine)?"""
        if not self.catching_up and (direction > 0 or index < self.seeds[item.track.prompt]):
            return False
        mask = self.ctx.letterbox.to_original(prob[None], mode="bilinear")[0] > 0.5
        others = {t.track_id for t in self.book.tracks if t.prompt == item.track.prompt and t is not item.track}
        if self.ctx.canvas.covered_by(index, mask, others) >= self.ctx.rule.absorb_fraction:
            item.track.active = False
            return True
        return False

    def _spawn(self, feats: SliceFeatures, index: int, spawns: list) -> list[_Live]:
        if not spawns:
            return []
        masks = torch.stack([prob > MASK_THRESHOLD for _, prob, _ in spawns])
        memories = self.tracker.seed(feats, masks.to(feats.top.device), index)
        items = []
        for (prompt, _, score), memory in zip(spawns, memories):
            track = self.book.start(prompt, index, score)
            self.memories[track.track_id] = memory
            items.append(_Live(track, memory))
        return items

    # -- streaming features --------------------------------------------------------------------------------------
    def _features(self, index: int, direction: int) -> SliceFeatures:
        """Tracker features of a slice, read back from the store for a window of ``batch_size`` slices."""
        if index not in self.features:
            self.ctx.cancel.raise_if_cancelled()  # a window is the sweeps' batch, so also their cancellation unit
            self.features.clear()
            end = index + direction * self.ctx.batch_size
            window = [i for i in range(index, end, direction) if 0 <= i < self.ctx.num_slices]
            self.features.update(zip(window, self.ctx.encoded.tracker_features(window, self.ctx.timer)))
        return self.features[index]


def _logit(prob: torch.Tensor) -> torch.Tensor:
    clipped = prob.clamp(1e-4, 1 - 1e-4)
    return torch.log(clipped / (1 - clipped))
