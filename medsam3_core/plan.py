"""The run plan: every setting of one segmentation run, resolved once, before the engine starts.

A user states *wishes* (:class:`~medsam3_core.segmenter.SegmentOptions`: "the model's threshold", "track mode", "7
memory frames"); what a run can do also depends on the model (its recommended threshold and 3D mode, whether it has
a trained tracker, how many memory frames its checkpoint holds, the concepts it was trained on). :func:`plan_run`
settles each of these in one place and records why (``threshold_source``, ``warnings``), so the engine reads a
:class:`RunPlan` and never re-derives a setting, and the report states exactly what ran. It is built at the edge
that owns the model: the local segmenter, which the CLI, the viewer, the HTTP server and the Python API all go
through.

The module is plain Python (no torch), so front-ends can import it before torch is available.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence, Union

from medsam3_core.errors import PromptError
from medsam3_core.prompts import fit_to_vocabulary
from medsam3_core.segmenter import SegmentOptions
from medsam3_core.windows import Window

__all__ = ["ModelLimits", "RunPlan", "plan_run"]


@dataclass(frozen=True)
class ModelLimits:
    """What a loaded model brings to a run.

    Attributes:
        score_threshold: the threshold the model recommends (its card's, else 0.5).
        tracker_frames: memory frames of its tracker (the checkpoint's ``num_maskmem``), ``None`` without a
            (trained) tracker.
        recommended_mode, clip_length: the 3D mode the weights were trained for and, for ``clips``, the slices
            per clip; used when a run names no mode.
        vocabulary: the concepts the model was trained on, when its folder lists them.
    """

    score_threshold: float
    tracker_frames: Optional[int]
    recommended_mode: str = "track"
    clip_length: int = 4
    vocabulary: Optional[tuple[str, ...]] = None

    @classmethod
    def of(cls, bundle) -> "ModelLimits":
        """The limits of a :class:`~medsam3_core.model.bundle.Sam3Bundle`."""
        frames = int(bundle.tracker.num_maskmem) if bundle.has_tracker else None
        vocabulary = getattr(bundle, "vocabulary", None)
        return cls(
            float(bundle.score_threshold),
            frames,
            getattr(bundle, "recommended_mode", "track"),
            int(getattr(bundle, "clip_length", 4)),
            tuple(vocabulary) if vocabulary is not None else None,
        )


@dataclass(frozen=True)
class RunPlan:
    """One run, fully resolved.

    Attributes:
        prompts: what the user typed, one label each (label ``k + 1`` = ``prompts[k]``).
        concepts: the text the model reads for each prompt (e.g. the canonical concept of a synonym).
        options: the options that run, threshold filled in and mode/memory size fitted to the model (reported).
        threshold_source: ``"model"`` (the model's recommendation) or ``"user"``.
        warnings: what was changed from the user's wishes, in words for any front-end.
    """

    prompts: tuple[str, ...]
    concepts: tuple[str, ...]
    options: SegmentOptions
    threshold_source: str
    warnings: tuple[str, ...] = ()

    @property
    def threshold(self) -> float:
        return float(self.options.threshold)

    @property
    def mode(self) -> str:
        return self.options.mode

    @property
    def memory_size(self) -> int:
        return self.options.memory_size

    @property
    def window(self) -> Window:
        """``None`` (automatic), a preset name or ``(centre, width)``, checked when the options were made."""
        return self.options.window

    @property
    def slice_axis(self) -> str:
        return self.options.slice_axis


def plan_run(
    prompts: Union[str, Sequence[str]],
    options: Optional[SegmentOptions],
    model: ModelLimits,
    concepts: Optional[Sequence[str]] = None,
) -> RunPlan:
    """Resolve one run: the model's threshold, mode and clip length when none is given, detect mode for a model
    without a tracker, the memory bank at most the checkpoint's frames, concepts fitted to the model's vocabulary.

    Raises:
        PromptError: ``concepts`` of another length than ``prompts`` (empty prompts are refused by the engine,
            which encodes them).
    """
    prompts = [str(p) for p in ([prompts] if isinstance(prompts, str) else prompts)]
    concepts = [str(c) for c in (prompts if concepts is None else concepts)]
    if len(concepts) != len(prompts):
        raise PromptError(f"Got {len(prompts)} prompts but {len(concepts)} concepts; give one concept per prompt.")
    options = options or SegmentOptions()
    warnings: list[str] = []
    changes: dict = {}
    if options.threshold is None:
        changes["threshold"] = model.score_threshold
    mode = options.mode or model.recommended_mode
    if mode != options.mode:
        changes["mode"] = mode
    if mode == "clips" and options.clip_length is None:
        changes["clip_length"] = model.clip_length
    if model.vocabulary is not None:
        concepts, off_vocabulary = fit_to_vocabulary(concepts, list(model.vocabulary))
        warnings += off_vocabulary
    if mode in ("track", "clips") and model.tracker_frames is None:
        warnings.append(f"The model has no (trained) tracker, so the run used detect mode instead of {mode} mode.")
        changes["mode"] = "detect"
    elif mode in ("track", "clips") and options.memory_size > model.tracker_frames:
        warnings.append(
            f"The memory size {options.memory_size} exceeds the checkpoint's {model.tracker_frames} memory frames; "
            f"used {model.tracker_frames}."
        )
        changes["memory_size"] = model.tracker_frames
    return RunPlan(
        prompts=tuple(prompts),
        concepts=tuple(concepts),
        options=dataclasses.replace(options, **changes),
        threshold_source="model" if options.threshold is None else "user",
        warnings=tuple(warnings),
    )
