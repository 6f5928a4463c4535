"""How every case of a batch is segmented and written: the command line's options, resolved once.

The recipe also yields each case's *job description* (:meth:`CaseRecipe.job`): the input, prompts and every
setting that changes the outputs. A finished case records it beside its outputs, and a rerun counts a case as done
only when the recorded job equals the one it would run now. Rerunning with other prompts or another model therefore
redoes the cases instead of keeping stale outputs, while the device or the progress display do not count.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

from medsam3_core.batch.cases import Case
from medsam3_core.cli.options import segment_options
from medsam3_core.cli.segment_case import OutputPlan
from medsam3_core.errors import InputError
from medsam3_core.segmenter import SegmentOptions

__all__ = ["CaseRecipe"]


@dataclass(frozen=True)
class CaseRecipe:
    """Options shared by the cases; a case's own ``window``, ``modality`` and ``series`` override them.

    ``outputs`` is the plan of every case relative to its folder (``--dicom-seg`` and ``--png`` name a file and a
    folder inside it), so every case carries its own.
    """

    options: SegmentOptions
    model: str
    outputs: OutputPlan
    modality: Optional[str] = None
    frame: Optional[int] = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CaseRecipe":
        """Resolve and check the options (raises :class:`InputError` for a bad one before any case runs)."""
        outputs = OutputPlan(Path("."), args.format, args.per_segment, args.confidence_map,
                             _inside_case("--dicom-seg", args.dicom_seg), _inside_case("--png", args.png),
                             args.synonyms)
        outputs.check()
        return cls(segment_options(args), str(args.model), outputs, args.modality, args.frame)

    @property
    def synonyms(self) -> Optional[str]:
        return self.outputs.synonyms

    def options_for(self, case: Case) -> SegmentOptions:
        if case.window is None:
            return self.options
        return SegmentOptions.from_dict({**self.options.to_dict(), "window": case.window})

    def plan(self, folder: Path) -> OutputPlan:
        """The outputs of one case written into ``folder``."""
        relative = self.outputs
        return replace(relative, folder=folder,
                       dicom_seg=folder / relative.dicom_seg if relative.dicom_seg is not None else None,
                       png=folder / relative.png if relative.png is not None else None)

    def job(self, case: Case) -> dict[str, Any]:
        """Everything that decides a case's outputs, as plain JSON data (compared for equality on reruns)."""
        source = case.input if case.input == "demo" else str(Path(case.input).resolve())
        return {
            "input": source, "series": case.series_uid, "prompts": list(case.prompts),
            "modality": case.modality or self.modality, "frame": self.frame, "model": self.model,
            "options": self.options_for(case).to_dict(), "synonyms": self.synonyms,
            "outputs": {"format": self.outputs.fmt, "per_segment": self.outputs.per_segment,
                        "confidence": self.outputs.confidence, "dicom_seg": _text(self.outputs.dicom_seg),
                        "png": _text(self.outputs.png)},
        }


def _inside_case(flag: str, text: Optional[str]) -> Optional[Path]:
    if not text:
        return None
    path = Path(text)
    if path.is_absolute() or ".." in path.parts:
        raise InputError(f"In a batch, {flag} names a path inside each case's folder (e.g. {flag} "
                         f"{'seg.dcm' if flag == '--dicom-seg' else 'png'}), not {text}.")
    return path


def _text(path: Optional[Path]) -> Optional[str]:
    return None if path is None else path.as_posix()
