"""What one engine run hands to its passes: the explicit context the detection pass and the sweeps work in.

The passes (:mod:`~medsam3_core.engine.detection_pass`, :mod:`~medsam3_core.engine.sweeps`) read everything they
need from a :class:`RunContext` instead of reaching into the run object, so each can be read, tested and replaced on
its own. The run resolves the settings once and fills the context; the passes only read it, except for the few
fields that are the run's shared outputs (the canvas, the notes for the report) and the batch size, which the
out-of-memory fallback lowers for the rest of the run (:mod:`~medsam3_core.engine.batching`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from medsam3_core.engine.canvas import Canvas
from medsam3_core.engine.detector import Detector, TextFeatures
from medsam3_core.engine.encoded_volume import EncodedVolume
from medsam3_core.engine.fusion import FusionRule
from medsam3_core.engine.timing import StageTimer
from medsam3_core.model.bundle import Sam3Bundle
from medsam3_core.progress import CancelToken, ProgressCallback

__all__ = ["RunContext"]


@dataclass
class RunContext:
    """One run's resolved inputs and shared outputs.

    Attributes:
        bundle, detector: the model and its detector.
        text: the encoded prompts (prompt ``p`` paints label ``p + 1``).
        encoded: the volume's slice stack, letterbox and feature stores.
        canvas: the output being painted.
        threshold: detection threshold; rule: fusion thresholds; max_objects: per prompt per slice.
        batch_size: slices per batch (lowered by the out-of-memory fallback); memory_size: tracker memory frames.
        timer: stage timer; progress, cancel: the caller's progress callback and cancel token.
        notes: lines for the report (e.g. that the batch size was lowered).
    """

    bundle: Sam3Bundle
    detector: Detector
    text: TextFeatures
    encoded: EncodedVolume
    canvas: Canvas
    threshold: float
    rule: FusionRule
    max_objects: int
    batch_size: int
    memory_size: int
    timer: StageTimer
    progress: Optional[ProgressCallback]
    cancel: CancelToken
    notes: list[str] = field(default_factory=list)

    @property
    def num_slices(self) -> int:
        return self.encoded.num_slices

    @property
    def letterbox(self):
        return self.encoded.letterbox
