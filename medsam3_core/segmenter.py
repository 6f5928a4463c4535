"""The one interface every front-end talks to: ``Segmenter.segment(volume, prompts, options, progress, cancel)``.

The local engine and the HTTP client both implement :class:`Segmenter`, so the CLI, the Slicer module and the tests
switch between local and remote inference by configuration only. Results are plain data
(:class:`SegmentationResult`) that serialise to the JSON report written beside every label map.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Protocol, Sequence

from medsam3_core.errors import SettingError
from medsam3_core.io.geometry import Volume
from medsam3_core.progress import CancelToken, ProgressCallback
from medsam3_core.windows import Window, normalize_window

__all__ = [
    "SegmentOptions",
    "ObjectInfo",
    "SegmentInfo",
    "SegmentationResult",
    "Segmenter",
    "MODES",
    "CLIP_FUSIONS",
    "SLICE_AXES",
    "THRESHOLD_SOURCES",
]

MODES = ("track", "detect", "clips")
#: How ``clips`` mode merges the clips that cover one slice (:mod:`medsam3_core.engine.clips`).
CLIP_FUSIONS = ("pixel_score", "tracker_score", "detection_score")
SLICE_AXES = ("axial", "coronal", "sagittal")
#: Where a run's score threshold came from: the model's recommendation (none given) or the user.
THRESHOLD_SOURCES = ("model", "user")


@dataclass
class SegmentOptions:
    """Knobs of one segmentation run (defaults are what a user gets without flags).

    Attributes:
        threshold: minimum detection score ``sigmoid(logit)·sigmoid(presence)`` for an instance to count;
            ``None`` (the default) means the model's recommended threshold (``Sam3Bundle.score_threshold``,
            0.5 for weights that state none), filled in by the segmenter before the run.
        window: ``None``/``"auto"`` (DICOM window, else modality default), a CT preset name
            (``soft-tissue``, ``lung``, ``bone``, ``brain``), ``"centre,width"`` or ``(centre, width)``; stored as
            ``None``, the preset name or ``(centre, width)`` (:func:`medsam3_core.windows.normalize_window`).
        slice_axis: anatomical axis the volume is sliced along.
        mode: ``"track"`` (detector + memory tracker, fused), ``"detect"`` (detector on every slice only),
            ``"clips"`` (independent short clips through detector + tracker, merged; how the Medical SAM3 3D release
            was trained and is run by its authors), or ``None``: the model's recommended mode
            (``Sam3Bundle.recommended_mode``), resolved by the segmenter before the run.
        batch_size: slices encoded per forward pass; also the cancellation granularity.
        cleanup: keep the largest 3D connected component per object and fill holes.
        memory_size: memory-bank frames used by the tracker (≤ the checkpoint's ``num_maskmem``).
        confidence_map: also return a per-voxel confidence volume.
        clip_length: slices per clip in ``clips`` mode; ``None`` = the model's (4 for the Medical SAM3 3D release).
        clip_fusion: how ``clips`` mode merges overlapping clips: ``pixel_score`` (default), ``tracker_score`` or
            ``detection_score`` (:mod:`medsam3_core.engine.clips`).
    """

    threshold: Optional[float] = None
    window: Window = None
    slice_axis: str = "axial"
    mode: str = "track"
    batch_size: int = 4
    cleanup: bool = False
    memory_size: int = 7
    confidence_map: bool = False
    clip_length: Optional[int] = None
    clip_fusion: str = "pixel_score"

    def __post_init__(self) -> None:
        """Check every setting and bring the window to its one form (the only place either happens); errors name
        the setting in ``field`` and in plain words, for every front-end to show in its own terms."""
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise SettingError(f"The threshold must be between 0 and 1, got {self.threshold}.", field="threshold")
        if self.slice_axis not in SLICE_AXES:
            raise SettingError(
                f"The slice axis must be one of {', '.join(SLICE_AXES)}, got {self.slice_axis!r}.", field="slice_axis"
            )
        if self.mode is not None and self.mode not in MODES:
            raise SettingError(f"The mode must be one of {', '.join(MODES)}, got {self.mode!r}.", field="mode")
        if self.batch_size < 1:
            raise SettingError("The batch size must be at least 1.", field="batch_size")
        if self.memory_size < 1:
            raise SettingError("The memory size must be at least 1.", field="memory_size")
        if self.clip_length is not None and (isinstance(self.clip_length, bool) or self.clip_length < 1):
            raise SettingError(f"The clip length must be at least 1, got {self.clip_length}.", field="clip_length")
        if self.clip_fusion not in CLIP_FUSIONS:
            raise SettingError(
                f"The clip fusion rule must be one of {', '.join(CLIP_FUSIONS)}, got {self.clip_fusion!r}.",
                field="clip_fusion",
            )
        self.window = normalize_window(self.window)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(self.window, tuple):
            d["window"] = list(self.window)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SegmentOptions":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("window"), list):
            known["window"] = tuple(known["window"])
        return cls(**known)


@dataclass
class ObjectInfo:
    """One 3D instance (an object id that persists across slices).

    ``slice_range`` is ``(first, last)`` slice index along the run's slice axis, inclusive; ``slice_scores`` maps
    slice index → confidence on that slice.
    """

    object_id: int
    label: int
    score: float
    voxels: int
    slice_range: tuple[int, int]
    slice_scores: dict[int, float] = field(default_factory=dict)


@dataclass
class SegmentInfo:
    """One prompt's result: label value in the label map, size, confidence and its objects."""

    prompt: str
    concept: str
    label: int
    voxels: int
    volume_ml: float
    score: float
    slice_range: Optional[tuple[int, int]]
    objects: list[ObjectInfo] = field(default_factory=list)


@dataclass
class SegmentationResult:
    """Label map (label k = k-th prompt, 0 = background) on exactly the input grid, plus facts about it.

    ``options`` are those the run used, with the threshold filled in; ``threshold_source`` says whether that
    threshold is the model's recommendation (``"model"``) or was given (``"user"``).
    """

    labelmap: Volume
    segments: list[SegmentInfo]
    confidence: Optional[Volume] = None
    timings: dict[str, float] = field(default_factory=dict)
    options: Optional[SegmentOptions] = None
    model: str = ""
    warnings: list[str] = field(default_factory=list)
    threshold_source: str = "user"

    @property
    def seconds(self) -> float:
        """Wall time of the whole call: the engine's stages add up to its ``total``, so ``total`` is not counted
        again; stages outside the engine (``read``) are added."""
        return sum(v for k, v in self.timings.items() if k != "total")

    def to_report(self) -> dict[str, Any]:
        """JSON-ready summary (what ``--report`` writes and the server returns)."""
        return {
            "model": self.model,
            "options": self.options.to_dict() if self.options else None,
            "threshold_source": self.threshold_source,
            "shape": list(self.labelmap.shape),
            "spacing": list(self.labelmap.spacing),
            "segments": [asdict(s) for s in self.segments],
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
        }


class Segmenter(Protocol):
    """Anything that turns a volume and text prompts into a :class:`SegmentationResult`."""

    def segment(
        self,
        volume: Volume,
        prompts: Sequence[str],
        options: Optional[SegmentOptions] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        concepts: Optional[Sequence[str]] = None,
    ) -> SegmentationResult:
        """Label ``k + 1`` is ``prompts[k]``; ``concepts[k]`` (default: the prompt itself) is the text the model
        reads, e.g. the canonical concept a synonym resolved to."""
