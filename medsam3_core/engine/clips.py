"""``clips`` mode: the volume as independent short clips through detector + tracker, merged slice by slice.

The Medical SAM3 3D release was trained on clips of 4 consecutive slices, and its authors run it the same way:
independent clips of K slices, each a short video through the detector and the memory tracker, and the clips'
results merged by a fusion rule. ``track`` mode instead carries objects through the whole volume; ``clips`` runs the
model the way it was trained.

Clip placement (:func:`clip_ranges`): clips of ``K`` slices start every ``ceil(K / 2)`` slices, and the last one ends on
the last slice, so every slice is covered, every interior slice by two clips, and a clip's first and last slices —
where it has the least context — lie in the middle of a neighbouring clip. The placement used by the authors is not
stated in what they published; overlapping by half is this project's choice. With ``K`` ≥ the number of slices there
is one clip, the whole volume, and the result is exactly ``track`` mode's.

Each clip runs through :class:`~medsam3_core.engine.volume_engine.VolumeEngine` in ``track`` mode, with the intensity
window of the whole volume (so every clip sees the same grey values). Where clips overlap, a **fusion rule** decides:

``pixel_score`` (default)
    Per voxel, the clip with the highest confidence (mask probability × object score) wins: the same pixel-wise
    maximum that resolves overlapping prompts inside one run. A structure found by either clip is kept.
``tracker_score``
    Per slice and prompt, the clip whose object of that prompt scored highest *on that slice* wins the whole slice
    for that prompt (trust the clip that tracked the object best there).
``detection_score``
    Per slice and prompt, the clip whose object of that prompt reached the highest score *anywhere in the clip*
    wins (trust the clip with the most confident detection).

Under the two per-slice rules, prompts that claim the same voxel are then resolved by the higher confidence, as
everywhere. Objects keep their own ids (renumbered to be unique across clips) and their slice ranges in volume
coordinates; an object's voxel count is what it covered in its own clip. Objects are not linked across clips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Union

import numpy as np

from medsam3_core.engine.preprocess import IntensityNormalizer, slice_stack, unstack
from medsam3_core.engine.volume_engine import EngineResult, ObjectRecord, VolumeEngine
from medsam3_core.io.geometry import Volume
from medsam3_core.progress import CancelToken, ProgressCallback
from medsam3_core.plan import ModelLimits, RunPlan, plan_run
from medsam3_core.segmenter import CLIP_FUSIONS, SegmentOptions

__all__ = ["DEFAULT_CLIP_LENGTH", "clip_ranges", "ClipResult", "merge_clips", "run_clips"]

#: Slices per clip of the Medical SAM3 3D release (trained and run on 4-slice clips).
DEFAULT_CLIP_LENGTH = 4


def clip_ranges(depth: int, length: int) -> list[tuple[int, int]]:
    """``[(start, stop), …]`` of the clips over ``depth`` slices (module docstring: stride ``ceil(length / 2)``)."""
    if depth < 1 or length < 1:
        raise ValueError("depth and clip length must be positive")
    if length >= depth:
        return [(0, depth)]
    stride = max(1, math.ceil(length / 2))
    starts = list(range(0, depth - length, stride)) + [depth - length]
    return [(s, s + length) for s in dict.fromkeys(starts)]


@dataclass
class ClipResult:
    """One clip's engine output in slice-stack layout ``(slices, H, W)``, and its objects (clip slice indices)."""

    start: int
    labels: np.ndarray
    confidence: np.ndarray
    objects: list[ObjectRecord]

    def prompt_score(self, prompt: int, local_slice: int, rule: str) -> float:
        """How much ``rule`` trusts this clip for ``prompt`` on one of its slices."""
        scores = [
            o.slice_scores.get(local_slice, 0.0) if rule == "tracker_score" else o.score
            for o in self.objects
            if o.prompt == prompt
        ]
        return max(scores, default=0.0)


def _merge_pixel_score(depth: int, plane: tuple[int, int], clips: Sequence[ClipResult]):
    labels = np.zeros((depth, *plane), clips[0].labels.dtype)
    confidence = np.zeros((depth, *plane), np.float32)
    for clip in clips:
        window = slice(clip.start, clip.start + clip.labels.shape[0])
        win = clip.confidence > confidence[window]
        labels[window][win] = clip.labels[win]
        confidence[window][win] = clip.confidence[win]
    return labels, confidence


def _merge_per_slice(depth: int, plane: tuple[int, int], clips: Sequence[ClipResult], prompts: int, rule: str):
    labels = np.zeros((depth, *plane), clips[0].labels.dtype)
    confidence = np.zeros((depth, *plane), np.float32)
    for index in range(depth):
        covering = [c for c in clips if c.start <= index < c.start + c.labels.shape[0]]
        for prompt in range(prompts):
            best = max(covering, key=lambda c: c.prompt_score(prompt, index - c.start, rule))
            local = index - best.start
            mask = best.labels[local] == prompt + 1
            win = mask & (best.confidence[local] > confidence[index])
            labels[index][win] = prompt + 1
            confidence[index][win] = best.confidence[local][win]
    return labels, confidence


def merge_clips(
    depth: int, clips: Sequence[ClipResult], prompts: int, rule: str = "pixel_score"
) -> tuple[np.ndarray, np.ndarray, list[ObjectRecord]]:
    """Labels and confidence ``(depth, H, W)`` and renumbered objects from overlapping clips, by ``rule``.

    Raises:
        ValueError: an unknown rule, or clips that leave a slice uncovered.
    """
    if rule not in CLIP_FUSIONS:
        raise ValueError(f"unknown clip fusion rule {rule!r}; choose one of {', '.join(CLIP_FUSIONS)}")
    covered = np.zeros(depth, bool)
    for clip in clips:
        covered[clip.start : clip.start + clip.labels.shape[0]] = True
    if not covered.all():
        raise ValueError(f"slices {np.flatnonzero(~covered).tolist()} are in no clip")
    plane = tuple(clips[0].labels.shape[1:])
    if rule == "pixel_score":
        labels, confidence = _merge_pixel_score(depth, plane, clips)
    else:
        labels, confidence = _merge_per_slice(depth, plane, clips, prompts, rule)
    objects: list[ObjectRecord] = []
    for clip in clips:
        for record in clip.objects:
            scores = {clip.start + s: v for s, v in sorted(record.slice_scores.items())}
            objects.append(ObjectRecord(len(objects) + 1, record.prompt, record.voxels, scores))
    return labels, confidence, objects


def _shared_window(volume: Volume, options: SegmentOptions) -> tuple[tuple[float, float], str]:
    """The whole volume's intensity mapping as an explicit ``(centre, width)``, so every clip uses the same one, and
    the note that explains it when it rests on a guess (an untagged scan read as CT)."""
    normalize = IntensityNormalizer.for_volume(volume, options.window)
    width = normalize.high - normalize.low
    return ((normalize.high + normalize.low) / 2.0, width if width > 0 else 1.0), normalize.inferred


def run_clips(
    engine: VolumeEngine,
    volume: Volume,
    plan: Union[RunPlan, Sequence[str]],
    options: Optional[SegmentOptions] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> EngineResult:
    """Segment ``volume`` in ``clips`` mode through ``engine``'s public :meth:`~VolumeEngine.run` (module docstring).

    ``plan`` is the run's resolved plan (the segmenter fills in the model's clip length); given concepts and options
    instead, the plan is made here by the same rule. The tracker must exist.
    """
    if not isinstance(plan, RunPlan):
        plan = plan_run(plan, options, ModelLimits.of(engine.bundle))
    concepts, options = plan.concepts, plan.options
    length = int(options.clip_length or DEFAULT_CLIP_LENGTH)
    stack, axis = slice_stack(volume, options.slice_axis)
    depth = int(stack.shape[0])
    ranges = clip_ranges(depth, length)
    clip_options = replace(options, mode="track")
    notes: list[str] = []
    if len(ranges) > 1:
        window, inferred = _shared_window(volume, options)
        clip_options = replace(clip_options, window=window)
        notes += [inferred] if inferred else []
    results: list[ClipResult] = []
    timings: dict[str, float] = {}
    for number, (start, stop) in enumerate(ranges):
        part = replace(volume, array=unstack(stack[start:stop], axis), metadata=dict(volume.metadata))
        scaled = _scaled_progress(progress, number, len(ranges))
        result = engine.run(part, replace(plan, options=clip_options), progress=scaled, cancel=cancel)
        for stage, seconds in result.timings.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
        notes += [note for note in result.notes if note not in notes]
        results.append(ClipResult(start, np.moveaxis(result.labels, axis, 0), np.moveaxis(result.confidence, axis, 0),
                                  result.objects))
    if len(results) == 1:  # the whole volume in one clip: exactly track mode
        only = results[0]
        return EngineResult(unstack(only.labels, axis), unstack(only.confidence, axis), only.objects, axis, "clips",
                            timings, notes)
    labels, confidence, objects = merge_clips(depth, results, len(concepts), options.clip_fusion)
    return EngineResult(
        np.ascontiguousarray(unstack(labels, axis)), np.ascontiguousarray(unstack(confidence, axis)),
        [o for o in objects if o.voxels > 0], axis, "clips", timings, notes,
    )


def _scaled_progress(progress: Optional[ProgressCallback], number: int, total: int) -> Optional[ProgressCallback]:
    """Each clip's stages reported as fractions of the whole run."""
    if progress is None:
        return None

    def scaled(stage: str, fraction: float) -> None:
        progress(stage, (number + fraction) / total)

    return scaled
