"""Write a segmentation result to a folder: label map, JSON report, optional per-prompt masks and confidence map.

All or nothing: every file is first written to a hidden temporary beside its target and only renamed into place once
all of them succeeded, so a failed or cancelled export never leaves a label map without its report, a half set of
masks, or a freshly created empty output folder. Existing files are replaced only at that final step; files of
earlier runs that this run does not produce (e.g. masks of other prompts) are left alone.
"""

from __future__ import annotations

import json
import math
import os
import re
import unicodedata
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from medsam3_core.errors import InputError
from medsam3_core.io.atomic import create_partial, remove_stale_partials
from medsam3_core.io.geometry import Volume
from medsam3_core.io.reading import write_volume
from medsam3_core.io.verify import verify_written_size
from medsam3_core.progress import CancelToken, ProgressCallback, report
from medsam3_core.segmenter import SegmentationResult

__all__ = ["EXPORT_FORMATS", "write_outputs", "safe_names", "to_jsonable"]

EXPORT_FORMATS = ("nii.gz", "nii", "nrrd", "mha", "png")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{n}" for n in range(1, 10)), *(f"lpt{n}" for n in range(1, 10))}


def safe_names(prompts: Sequence[str], max_length: int = 80) -> list[str]:
    """File-name stems for prompts: no path separators or reserved characters, unique ignoring case.

    Letters of any script are kept (``"Leber"``, ``"肝臓"``); whitespace becomes ``_``; names that collide (also
    on case-insensitive file systems) get ``_2``, ``_3`` …; an empty result becomes ``segment_<n>``.
    """
    names: list[str] = []
    taken: set[str] = set()
    for n, prompt in enumerate(prompts, start=1):
        name = unicodedata.normalize("NFC", str(prompt))
        name = re.sub(r'[<>:"/\\|?*\x00-\x1f\x7f]', "", name)
        name = re.sub(r"\s+", "_", name.strip()).strip("._")[:max_length]
        if not name:
            name = f"segment_{n}"
        if name.lower() in _WINDOWS_RESERVED:
            name += "_"
        candidate, count = name, 1
        while candidate.lower() in taken:
            count += 1
            candidate = f"{name}_{count}"
        taken.add(candidate.lower())
        names.append(candidate)
    return names


def to_jsonable(value: Any) -> Any:
    """Plain JSON types for a report: numpy scalars/arrays, tuples and paths converted; NaN/inf become ``None``."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _label_volume(labelmap: Volume) -> Volume:
    top = int(labelmap.array.max(initial=0))
    if top > np.iinfo(np.uint16).max:
        raise InputError(f"Too many labels ({top}) for a label map file; use fewer prompts.")
    dtype = np.uint8 if top <= np.iinfo(np.uint8).max else np.uint16
    return labelmap.with_array(labelmap.array.astype(dtype, copy=False))


def write_outputs(
    result: SegmentationResult,
    out_dir: Union[str, Path],
    *,
    fmt: str = "nii.gz",
    per_segment: bool = False,
    confidence: bool = False,
    extra_report: Optional[dict[str, Any]] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> dict[str, Path]:
    """Write ``labels.<fmt>``, ``report.json`` and optionally ``masks/<prompt>.<fmt>`` and ``confidence.<fmt>``.

    Args:
        result: the segmentation; its label map geometry is written unchanged.
        out_dir: created if missing (and removed again if the export fails).
        fmt: ``nii.gz``, ``nii``, ``nrrd``, ``mha``, or ``png`` for single-slice (2D) results.
        per_segment: one binary (0/1, uint8) mask per prompt, named from the prompt (see :func:`safe_names`).
        confidence: the float32 per-voxel confidence map (``result.confidence`` must be set).
        extra_report: merged over ``result.to_report()`` (e.g. input path and geometry from the front-end).

    Returns:
        ``{"labels": …, "report": …, "confidence": …, "mask:<prompt>": …}`` — the files written.

    Raises:
        InputError: unknown format, an output folder that is a file, or an unwritable destination.
        Cancelled: ``cancel`` was set before the files were moved into place (nothing is left behind).
    """
    fmt = fmt.lower().lstrip(".")
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"Unknown output format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}.")
    if confidence and result.confidence is None:
        raise ValueError("confidence=True but the result has no confidence map (set SegmentOptions.confidence_map)")
    if fmt == "png" and confidence:
        raise InputError("A confidence map cannot be stored as PNG; choose nii.gz, nrrd or mha.")
    if fmt == "png" and result.labelmap.shape[0] != 1:
        raise InputError(f"PNG output holds one slice, but the result has {result.labelmap.shape[0]}; use nii.gz.")
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"Output folder {out_dir} is a file; choose a folder name.")

    labels = _label_volume(result.labelmap)
    planned: list[tuple[str, Path, Any]] = [("labels", out_dir / f"labels.{fmt}", labels)]
    if per_segment:
        names = safe_names([s.prompt for s in result.segments])
        for seg, name in zip(result.segments, names, strict=True):
            mask = labels.with_array((labels.array == seg.label).astype(np.uint8))
            planned.append((f"mask:{seg.prompt}", out_dir / "masks" / f"{name}.{fmt}", mask))
    if confidence:
        conf = result.confidence.with_array(np.asarray(result.confidence.array, dtype=np.float32))
        planned.append(("confidence", out_dir / f"confidence.{fmt}", conf))
    report_data = to_jsonable({**result.to_report(), **(extra_report or {})})
    report_data["outputs"] = {key: path.relative_to(out_dir).as_posix() for key, path, _ in planned}
    planned.append(("report", out_dir / "report.json", report_data))

    created_dirs = [d for d in (out_dir, out_dir / "masks") if not d.exists()]
    for folder in (out_dir, out_dir / "masks"):
        remove_stale_partials(folder)  # left by a run that was killed outright
    staged: list[tuple[Path, Path]] = []
    try:
        for n, (_, target, content) in enumerate(planned):
            if cancel is not None:
                cancel.raise_if_cancelled()
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = create_partial(target)
            staged.append((tmp, target))
            try:
                _write_one(content, tmp)
            except InputError as err:  # name the file the user asked for, not our temporary
                raise InputError(str(err).replace(str(tmp), str(target)).replace(tmp.name, target.name)) from None
            report(progress, "write", (n + 1) / (len(planned) + 1))
        if cancel is not None:
            cancel.raise_if_cancelled()
        for tmp, target in staged:
            os.replace(tmp, target)
    except BaseException as err:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for folder in reversed(created_dirs):
            _remove_if_empty(folder)
        if isinstance(err, OSError):
            raise InputError(f"Cannot write the results to {out_dir}: {err.strerror or err}. "
                             "Check the folder is writable and the disk has space.") from None
        raise
    report(progress, "write", 1.0)
    return {key: target for (key, target, _) in planned}


def _write_one(content: Any, path: Path) -> None:
    if isinstance(content, Volume):
        write_volume(content, path)
    else:
        data = (json.dumps(content, indent=2, allow_nan=False) + "\n").encode("utf-8")
        path.write_bytes(data)
        verify_written_size(path, len(data), path.name)


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (someone else wrote there) or already gone: leave it
