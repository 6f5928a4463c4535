"""Turn what a user names on the ``batch`` command line into cases: one scan, its prompts and its output folder.

Accepted inputs, any number of them and mixed:

* an image file (NIfTI, NRRD, MetaImage, or a 2D picture) or ``demo``: one case;
* a folder: every NIfTI/NRRD/MetaImage file in it (recursively) is a case, and so is every DICOM series in it. A
  series is read from its own files' folder with its SeriesInstanceUID, so the series rules of ``infer`` apply
  unchanged (localisers in the series dropped, slices ordered in space, ``--frame`` for several images per position);
* a manifest, ``.csv`` or ``.jsonl``: one case per row with ``input`` (relative paths are relative to the manifest)
  and optionally ``prompts`` (``;``-separated in CSV, a list or a ``;``-separated string in JSONL; default ``-p``),
  ``output`` (the case's folder; relative to the output root), ``series``, ``modality`` and ``window``.

Case names are the output folder names. They come from the paths (``sub/scan.nii.gz`` becomes ``sub_scan``), so the
same command finds the same names again: that is what lets a rerun recognise the cases it already finished.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from medsam3_core.errors import InputError
from medsam3_core.io.export import safe_names

__all__ = ["Case", "VOLUME_SUFFIXES", "MANIFEST_COLUMNS", "collect_cases", "split_prompts"]

#: Files a folder scan takes as cases (2D pictures in a folder are more often figures than scans).
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
MANIFEST_COLUMNS = ("input", "prompts", "output", "series", "modality", "window")
_DEMO = "demo"
_BY_NAME = Path(".")  # a collected case without an output of its own: out_root/<name>


@dataclass(frozen=True)
class Case:
    """One scan to segment.

    Attributes:
        name: unique among the cases; the output folder's name unless the manifest gave an ``output``.
        input: what :func:`medsam3_core.segmenters.opening.open_input` reads (a file, a DICOM folder or ``demo``).
        output: the case's output folder (while the cases are collected: a manifest's ``output`` as given, or
            ``.`` for "under the output root by name").
        prompts: the concepts to segment in this case.
        series_uid, modality, window: this case's own choices (``None``: the command line's).
    """

    name: str
    input: str
    output: Path
    prompts: tuple[str, ...]
    series_uid: Optional[str] = None
    modality: Optional[str] = None
    window: Optional[str] = None


def split_prompts(value: Any) -> tuple[str, ...]:
    """A manifest's prompts: a list, or one string with ``;`` between prompts (prompts themselves may hold spaces)."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else str(value).split(";")
    return tuple(str(p).strip() for p in items if str(p).strip())


def collect_cases(inputs: Sequence[str], prompts: Sequence[str], out_root: Path) -> list[Case]:
    """All cases the inputs name, in a stable order, each with a unique output folder under ``out_root``.

    Raises:
        InputError: a missing input, a folder without images or DICOM series, a malformed manifest, a case without
            prompts, or two cases writing to the same folder.
    """
    out_root = Path(out_root).expanduser().resolve()
    default_prompts = tuple(p for p in prompts)
    found: list[Case] = []
    for text in inputs:
        found.extend(_cases_of(text, default_prompts, out_root))
    if not found:
        raise InputError("No cases to run: the inputs name no image, DICOM series or manifest row.")
    return _named(found, out_root)


def _cases_of(text: str, prompts: tuple[str, ...], out_root: Path) -> list[Case]:
    if text == _DEMO:
        return [Case(_DEMO, _DEMO, _BY_NAME, _need_prompts(prompts, text))]
    path = Path(text).expanduser()
    if not path.exists():
        raise InputError(f"Input not found: {path}. Check the path.")
    lower = path.name.lower()
    if path.is_file() and lower.endswith((".csv", ".jsonl")):
        return _manifest(path, prompts)
    if path.is_file():
        return [Case(_stem(path), str(path), _BY_NAME, _need_prompts(prompts, text))]
    found = _folder(path.resolve(), _need_prompts(prompts, text), out_root)
    if not found:
        raise InputError(f"No NIfTI, NRRD or MHA images and no DICOM series found in {path} (including subfolders).")
    return found


def _need_prompts(prompts: tuple[str, ...], where: str) -> tuple[str, ...]:
    if not prompts:
        raise InputError(f"No prompts for {where}: give them with -p/--prompts (e.g. -p kidney liver), or use a "
                         "manifest with a 'prompts' column.")
    return prompts


def _stem(path: Path) -> str:
    """The file name without its format's suffix (``scan.nii.gz`` → ``scan``)."""
    from medsam3_core.io.reading import format_of

    suffix = format_of(path)
    return (path.name[: -len(suffix)] if suffix else path.stem) or path.name


def _relative_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).parts
    return "_".join(parts) if parts else root.name


def _folder(root: Path, prompts: tuple[str, ...], out_root: Path) -> list[Case]:
    """Image files and DICOM series under ``root`` (hidden entries and the output root itself are left out)."""
    images: list[Case] = []
    for path in _walk(root, out_root):
        if path.name.lower().endswith(VOLUME_SUFFIXES):
            images.append(Case(_relative_name(path.parent / _stem(path), root), str(path), _BY_NAME, prompts))
    return images + _dicom_series(root, prompts, out_root)


def _walk(root: Path, out_root: Path) -> Iterable[Path]:
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if entry.resolve() != out_root:  # a rerun must not take last run's label maps for scans
                yield from _walk(entry, out_root)
        else:
            yield entry


def _dicom_series(root: Path, prompts: tuple[str, ...], out_root: Path) -> list[Case]:
    """One case per DICOM series, read from the folder that holds its files."""
    from medsam3_core.io.dicom import list_series_files

    series = []
    for info, files in list_series_files(root):
        if any(out_root in f.resolve().parents for f in files):
            continue  # a DICOM SEG or overlay of an earlier run is no scan
        folder = Path(*_common_parts([f.parent.resolve() for f in files]))
        series.append((info, folder))
    per_folder: dict[Path, int] = {}
    for _, folder in series:
        per_folder[folder] = per_folder.get(folder, 0) + 1
    found = []
    for info, folder in sorted(series, key=lambda s: (str(s[1]), s[0].series_number or 0, s[0].uid)):
        name = _relative_name(folder, root)
        if per_folder[folder] > 1:  # several series in one folder: tell them apart by number (or UID)
            name += f"_S{info.series_number}" if info.series_number is not None else f"_{info.uid[-8:]}"
        found.append(Case(name, str(folder), _BY_NAME, prompts, series_uid=info.uid))
    return found


def _common_parts(folders: list[Path]) -> tuple[str, ...]:
    parts = folders[0].parts
    for folder in folders[1:]:
        n = 0
        while n < min(len(parts), len(folder.parts)) and parts[n] == folder.parts[n]:
            n += 1
        parts = parts[:n]
    return parts


# ---------------------------------------------------------------------------------------------------- manifests
def _manifest(path: Path, prompts: tuple[str, ...]) -> list[Case]:
    rows = _csv_rows(path) if path.name.lower().endswith(".csv") else _jsonl_rows(path)
    found = []
    for where, row in rows:
        unknown = sorted(set(row) - set(MANIFEST_COLUMNS))
        if unknown:
            raise InputError(f"{where}: unknown column {', '.join(map(repr, unknown))}; the columns are "
                             f"{', '.join(MANIFEST_COLUMNS)}.")
        value = {k: (str(v).strip() if v is not None and not isinstance(v, list) else v) for k, v in row.items()}
        if not value.get("input"):
            raise InputError(f"{where}: no 'input'; every row names the scan to segment.")
        source = Path(value["input"]).expanduser()
        if value["input"] != _DEMO and not source.is_absolute():
            source = path.parent / source
        case_prompts = split_prompts(value.get("prompts")) or prompts
        if not case_prompts:
            raise InputError(f"{where}: no prompts; fill its 'prompts' (e.g. kidney;liver) or give -p.")
        text = _DEMO if value["input"] == _DEMO else str(source)
        name = Path(value["output"]).name if value.get("output") else _stem(Path(text))
        found.append(Case(name, text, Path(value.get("output") or _BY_NAME), case_prompts,
                          value.get("series") or None, value.get("modality") or None, value.get("window") or None))
    return found


def _csv_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "input" not in [c.strip() for c in reader.fieldnames]:
                raise InputError(f"{path}: the first line must name the columns, among them 'input'.")
            return [(f"{path} line {n}", {(k or "").strip(): v for k, v in row.items() if k is not None})
                    for n, row in enumerate(reader, start=2) if any((v or "").strip() for v in row.values())]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"Cannot read the manifest {path}: {err}.") from None


def _jsonl_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"Cannot read the manifest {path}: {err}.") from None
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise InputError(f"{path} line {n}: not JSON ({err.msg}).") from None
        if not isinstance(row, dict):
            raise InputError(f"{path} line {n}: each line must be a JSON object such as "
                             '{"input": "scan.nii.gz", "prompts": ["kidney"]}.')
        rows.append((f"{path} line {n}", row))
    return rows


# ---------------------------------------------------------------------------------------------------- names
def _named(found: list[Case], out_root: Path) -> list[Case]:
    """Unique names; a manifest's own ``output`` is kept as given, every other case gets ``out_root/<name>``."""
    names = safe_names([f.name for f in found])
    cases, taken = [], {}
    for f, name in zip(found, names, strict=True):
        output = (out_root / (name if f.output == _BY_NAME else f.output)).expanduser().resolve()
        if output == out_root:
            raise InputError(f"Case {name!r} would write into the output root {out_root} itself; give it a folder.")
        if output in taken:
            raise InputError(f"Cases {taken[output]!r} and {name!r} would both write to {output}; give them "
                             "different 'output' folders.")
        taken[output] = name
        cases.append(replace(f, name=name, output=output))
    return cases
