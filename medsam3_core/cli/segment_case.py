"""Segment one volume and write everything asked for: the step ``infer`` runs once and ``batch`` runs per case.

Keeping it in one place is what makes a case of ``batch`` byte-for-byte the outputs of ``infer`` on that scan: the
same report (input geometry, prompt resolutions, warnings), the same label map and masks through
:func:`medsam3_core.io.export.write_outputs`, and the same DICOM SEG and PNG overlays. All or nothing: when an extra
output fails, the files already written for this result are removed again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from medsam3_core.errors import InputError
from medsam3_core.io.atomic import remove_path
from medsam3_core.io.geometry import Volume
from medsam3_core.progress import CancelToken, ProgressCallback, report
from medsam3_core.prompts import PromptResolution
from medsam3_core.segmenter import SegmentOptions, Segmenter
from medsam3_core.segmenters.predict import segment_resolved

__all__ = ["OutputPlan", "segment_and_write"]


@dataclass(frozen=True)
class OutputPlan:
    """What to write for one result and where.

    Attributes:
        folder: gets ``labels.<fmt>``, ``report.json`` and the optional masks and confidence map.
        fmt, per_segment, confidence: as ``--format``, ``--per-segment``, ``--confidence-map``.
        dicom_seg: the DICOM SEG file to write (DICOM input only), or ``None``.
        png: the folder for overlay pictures, or ``None``.
        synonyms: the extra synonym table the prompts were resolved with (its codes go into the DICOM SEG).
    """

    folder: Path
    fmt: str = "nii.gz"
    per_segment: bool = False
    confidence: bool = False
    dicom_seg: Optional[Path] = None
    png: Optional[Path] = None
    synonyms: Optional[str] = None

    def check(self) -> None:
        """Refuse a plan that cannot succeed before anything is read or loaded."""
        if self.dicom_seg is not None and not str(self.dicom_seg).lower().endswith(".dcm"):
            raise InputError("--dicom-seg must name a .dcm file.")

    def check_input(self, volume: Volume) -> None:
        """Refuse, right after reading and before any model runs, outputs the input cannot give: a format that
        cannot store its grid exactly, a DICOM SEG without the DICOM images (and frame of reference) it refers to."""
        from medsam3_core.io.outputs import check_format_holds

        check_format_holds(volume, self.fmt)
        if self.dicom_seg is not None:
            from medsam3_core.io.dicom_seg import check_seg_source

            check_seg_source(volume)


def segment_and_write(
    segmenter: Segmenter,
    volume: Volume,
    resolutions: Sequence[PromptResolution],
    options: SegmentOptions,
    plan: OutputPlan,
    *,
    input_text: str,
    read_seconds: float,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> dict[str, Any]:
    """Segment ``volume`` by the resolved prompts and write ``plan``'s outputs.

    Returns:
        ``{"result": SegmentationResult, "written": {key: path}, "warnings": [input and run warnings]}``.

    Raises:
        MedSam3Error: an unusable option or an unwritable destination (nothing of this result is left behind).
        Cancelled: ``cancel`` was set before the outputs were in place.
    """
    cancel = cancel or CancelToken()
    result = segment_resolved(segmenter, volume, resolutions, options, progress, cancel)
    result.timings = {"read": read_seconds, **result.timings}
    cancel.raise_if_cancelled()

    report(progress, "write", 0.0)
    extra = {
        "input": {"path": str(volume.metadata.get("source", input_text)), "shape": list(volume.shape),
                  "spacing": list(volume.spacing), "origin": list(volume.origin),
                  "direction": volume.direction.tolist(), "modality": volume.modality},
        "prompts": [r.to_dict() for r in resolutions],
        "input_warnings": list(volume.metadata.get("warnings", [])),
    }
    from medsam3_core.io.export import write_outputs

    written = write_outputs(result, plan.folder, fmt=plan.fmt, per_segment=plan.per_segment,
                            confidence=plan.confidence, extra_report=extra, cancel=cancel)
    try:
        if plan.dicom_seg is not None:
            from medsam3_core.io.dicom_seg import write_dicom_seg

            write_dicom_seg(result.labelmap, result.segments, volume, plan.dicom_seg, model=result.model,
                            synonyms_file=plan.synonyms)
            written["dicom_seg"] = Path(plan.dicom_seg)
        if plan.png is not None:
            from medsam3_core.io.overlay import write_overlays

            written["png"] = Path(plan.png)
            write_overlays(volume, result.labelmap, result.segments, plan.png, slice_axis=options.slice_axis,
                           window=options.window)
        cancel.raise_if_cancelled()  # a signal during the extra outputs takes the label map with it too
    except BaseException:
        for path in written.values():  # all or nothing: a failed extra output takes the label map with it
            remove_path(path)
        raise
    report(progress, "write", 1.0)
    return {"result": result, "written": written, "warnings": extra["input_warnings"] + result.warnings}

