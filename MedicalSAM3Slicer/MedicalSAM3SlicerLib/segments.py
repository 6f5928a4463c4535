"""Turn a label map plus the run's report into per-prompt segments: name, mask, colour and confidence.

Kept apart from MRML so the mapping (label k = k-th prompt, unique names, colours, confidence tags, standard
terminology) is tested without Slicer; the module imports the label map once and copies :class:`SegmentData` onto
the segments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

__all__ = [
    "SegmentData", "segments_from_labelmap", "summary_line", "unique_names", "terminology_entry", "CONFIDENCE_TAG",
    "SOURCE_TAG", "TERMINOLOGY_TAG",
]

#: Segment tag holding the detection confidence (0..1, as text) of a segment made by this module.
CONFIDENCE_TAG = "MedicalSAM3.Confidence"
#: Segment tag naming the model that produced a segment.
SOURCE_TAG = "MedicalSAM3.Model"

#: Segment tag Slicer reads the segment's standard terminology from (category, type; shown and saved in DICOM SEG).
TERMINOLOGY_TAG = "TerminologyEntry"
TERMINOLOGY_CONTEXT = "Segmentation category and type - DICOM master list"
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"


@dataclass
class SegmentData:
    """One segment to write: its name (the prompt, made unique), label value, colour, confidence and the
    standard terminology of the concept the model was asked for."""

    name: str
    label: int
    color: tuple[float, float, float]
    score: Optional[float]
    voxels: int
    volume_ml: Optional[float]
    terminology: str = ""


def unique_names(prompts: Sequence[str]) -> list[str]:
    """Segment names for the prompts in label order: the prompt itself, ``liver 2`` for a second ``liver``.

    The core keeps duplicate prompts as separate labels (as the command line does); Slicer finds segments by name
    (case-insensitively), so each label needs a name of its own."""
    names: list[str] = []
    for prompt in prompts:
        name, n = prompt, 2
        while name.lower() in (existing.lower() for existing in names):
            name, n = f"{prompt} {n}", n + 1
        names.append(name)
    return names


def terminology_entry(concept: str) -> str:
    """Slicer's serialized terminology (``context~category~type~modifier~anatomic context~region~modifier``, each
    code ``scheme^value^meaning``) with the codes the core's DICOM SEG writer uses for the same concept."""
    from medsam3_core.prompts import coded_concept

    category, kind = coded_concept(concept)
    codes = [f"{c.scheme}^{c.value}^{c.meaning}" for c in (category, kind)]
    return "~".join([TERMINOLOGY_CONTEXT, *codes, "^^", ANATOMIC_CONTEXT, "^^", "^^"])


def segments_from_labelmap(
    labelmap: np.ndarray, prompts: Sequence[str], report_segments: Sequence[dict[str, Any]] = ()
) -> list[SegmentData]:
    """One :class:`SegmentData` per prompt, in prompt order (label k = k-th prompt, 1-based).

    ``report_segments`` are the ``segments`` entries of the run's report; the score, volume and concept of the entry
    with the same label are attached. A prompt that found nothing still gets an (empty) segment, so the user sees
    that it was looked for, and its confidence says why it is empty. Colours come from the core's table, so label k
    looks the same in the CLI's pictures, the viewer and Slicer.
    """
    from medsam3_core.io.colors import segment_color_float

    by_label = {int(s["label"]): s for s in report_segments if "label" in s}
    counts = np.bincount(np.asarray(labelmap).ravel().astype(np.int64, copy=False), minlength=len(prompts) + 1)
    unexpected = [v for v in np.nonzero(counts)[0].tolist() if not 0 <= v <= len(prompts)]
    if unexpected:
        raise ValueError(f"label map has labels {unexpected} but only {len(prompts)} prompt(s) were given")
    result = []
    for label, (prompt, name) in enumerate(zip(prompts, unique_names(prompts)), start=1):
        info = by_label.get(label, {})
        score = info.get("score")
        result.append(SegmentData(
            name=name, label=label, color=segment_color_float(label),
            score=None if score is None else float(score), voxels=int(counts[label]),
            volume_ml=None if info.get("volume_ml") is None else float(info["volume_ml"]),
            terminology=terminology_entry(info.get("concept") or prompt),
        ))
    return result


def summary_line(segments: Sequence[SegmentData], timings: dict[str, float], wall_s: float, model: str = "") -> str:
    """Status-line text: what was found, where the time went and which model did it, e.g.
    ``liver 1520.3 mL (0.91), tumor: not found · 12.4 s (load 3.1, encode 6.2, detect 2.9) · model: medsam3-ct``.

    The model is named because the built-in demo model is untrained and says so in its name; a user must not
    mistake its masks for a real result."""
    parts = []
    for seg in segments:
        if seg.voxels == 0:
            parts.append(f"{seg.name}: not found")
            continue
        size = f"{seg.volume_ml:.1f} mL" if seg.volume_ml is not None else f"{seg.voxels} voxels"
        score = f" ({seg.score:.2f})" if seg.score is not None else ""
        parts.append(f"{seg.name} {size}{score}")
    steps = ", ".join(f"{name} {seconds:.1f}" for name, seconds in timings.items()
                      if seconds >= 0.05 and name != "total")
    text = f"{', '.join(parts)} \u00b7 {wall_s:.1f} s" + (f" ({steps})" if steps else "")
    return text + (f" \u00b7 model: {model}" if model else "")
