"""DICOM series reading with pydicom: find the series in a folder, order its slices in space, build the geometry.

Why not just sort file names or trust SimpleITK's series reader: file names are arbitrary (and often shuffled by
anonymisers), folders mix several series, localiser images share a series with the axial stack, slice spacing can be
irregular and CT values need RescaleSlope/Intercept. This module handles each of these explicitly and records what
it found (``metadata["slice_gaps"]``, ``metadata["warnings"]``) so the user is told rather than silently misled.

Geometry follows DICOM (LPS): the i axis is the first ImageOrientationPatient triplet (along a row), j the second
(down a column), k the slice normal ``i × j``; slices are sorted by ImagePositionPatient projected on k, and the
spacing along k is measured from the positions (SliceThickness is not spacing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError

from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume
from medsam3_core.io.validation import check_voxel_count, is_regular_file
from medsam3_core.progress import CancelToken, ProgressCallback, report

__all__ = ["SeriesInfo", "list_series", "list_series_files", "read_dicom_series", "read_dicom_file_series"]

_PathLike = Union[str, Path]
# Objects that share a series with images but hold no image to stack (segmentations, structure sets, reports).
_NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation Storage
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
}
_SCAN_SHARE = 0.2  # part of the "load" progress spent reading headers; decoding pixels takes the rest
_GAP_TOLERANCE = 0.05  # relative deviation from the median slice distance reported as a gap / irregularity
_SPACING_TOLERANCE = 1e-3  # relative difference of PixelSpacing between slices still taken as the same


@dataclass(frozen=True)
class SeriesInfo:
    """What a user needs to pick a series: UID, description, modality and how many images it has."""

    uid: str
    description: str
    modality: str
    images: int
    study_uid: str
    series_number: Optional[int]

    def describe(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.uid} ({self.modality}{desc}, {self.images} images)"


@dataclass
class _Slice:
    """One 2D image: a single-frame file, or one frame of an enhanced multi-frame file."""

    path: Path
    frame: Optional[int]
    position: Optional[np.ndarray]
    orientation: Optional[np.ndarray]
    pixel_spacing: tuple[float, float]  # (between rows, between columns), as DICOM orders it
    slope: float
    intercept: float
    temporal_key: tuple
    sop_uid: str


# ---------------------------------------------------------------------------------------------------------------- scan
def _walk(folder: Path, recursive: bool) -> Iterable[Path]:
    """Regular files only: opening a FIFO or a device found in the folder would block or never end."""
    if not recursive:
        yield from sorted(p for p in folder.iterdir() if is_regular_file(p))
        return
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if is_regular_file(Path(root) / name):
                yield Path(root) / name


def _scan(
    folder: Path, recursive: bool, progress: Optional[ProgressCallback], cancel: Optional[CancelToken]
) -> tuple[dict[str, list[tuple[Path, Any]]], int]:
    """Headers (no pixels) of every DICOM image file under ``folder`` grouped by SeriesInstanceUID."""
    files = list(_walk(folder, recursive))
    series: dict[str, list[tuple[Path, Any]]] = {}
    for n, path in enumerate(files):
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, KeyError, AttributeError):
            continue  # not DICOM (or unreadable junk): other files in a DICOM folder are normal
        uid = str(ds.get("SeriesInstanceUID", ""))
        if not uid or "Rows" not in ds or str(ds.get("SOPClassUID", "")) in _NON_IMAGE_SOP_CLASSES:
            continue
        series.setdefault(uid, []).append((path, ds))
        if n % 32 == 0:
            report(progress, "load", _SCAN_SHARE * n / max(1, len(files)))
    return series, len(files)


def _series_info(uid: str, headers: list[tuple[Path, Any]]) -> SeriesInfo:
    ds = headers[0][1]
    number = ds.get("SeriesNumber")
    images = sum(int(h.get("NumberOfFrames", 1) or 1) for _, h in headers)
    return SeriesInfo(
        uid=uid,
        description=str(ds.get("SeriesDescription", "")),
        modality=str(ds.get("Modality", "")),
        images=images,
        study_uid=str(ds.get("StudyInstanceUID", "")),
        series_number=int(number) if number not in (None, "") else None,
    )


def list_series(folder: _PathLike, *, recursive: bool = True) -> list[SeriesInfo]:
    """All image series in ``folder`` (recursively), most images first."""
    return [info for info, _ in list_series_files(folder, recursive=recursive)]


def list_series_files(folder: _PathLike, *, recursive: bool = True) -> list[tuple[SeriesInfo, list[Path]]]:
    """Like :func:`list_series`, with the files of each series, so a caller that reads many series of a tree can
    read each from its own files' folder instead of scanning the whole tree again."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"Not a folder: {folder}.")
    series, _ = _scan(folder, recursive, None, None)
    found = [(_series_info(uid, h), [path for path, _ in h]) for uid, h in series.items()]
    return sorted(found, key=lambda item: (-item[0].images, item[0].uid))


# ----------------------------------------------------------------------------------------------------------- read
def read_dicom_series(
    folder: _PathLike,
    *,
    series_uid: Optional[str] = None,
    frame: Optional[int] = None,
    recursive: bool = True,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    empty_hint: str = "",
    max_voxels: Optional[int] = None,
) -> Volume:
    """Load one series from a folder of DICOM files as a :class:`Volume`.

    Args:
        folder: searched recursively; non-DICOM files are ignored.
        series_uid: the SeriesInstanceUID to load; default the series with most images.
        frame: for series with several images per position (time points, echoes), which one to take.
        empty_hint: appended to the error when the folder holds no DICOM image (the caller knows what else is there).
        max_voxels: refuse a series with more voxels than this before decoding its pixels (see ``read_volume``).

    Raises:
        InputError: no DICOM images, unknown ``series_uid`` (the message lists the available ones), undecodable
            pixels, or an inconsistent series.
        Cancelled: ``cancel`` was set while reading.
    """
    folder = Path(folder)
    series, n_files = _scan(folder, recursive, progress, cancel)
    if not series:
        raise InputError(
            f"No DICOM images found in {folder} ({n_files} files checked, including subfolders)."
            + (empty_hint or " Point to a folder of DICOM files or to an image file (.nii.gz, .nrrd, .mha, .png …).")
        )
    chosen_by_size = series_uid is None
    if chosen_by_size:
        series_uid = max(series, key=lambda uid: (_series_info(uid, series[uid]).images, uid))
    elif series_uid not in series:
        available = sorted((_series_info(u, h) for u, h in series.items()), key=lambda s: -s.images)
        raise InputError(
            f"Series {series_uid} is not in {folder}. Available: " + "; ".join(s.describe() for s in available)
        )
    volume = _build_volume(series[series_uid], frame, progress, cancel, max_voxels)
    volume.metadata["source"] = str(folder)
    volume.metadata["series_count"] = len(series)
    if chosen_by_size and len(series) > 1:
        chosen = _series_info(series_uid, series[series_uid])
        others = sorted((_series_info(u, h) for u, h in series.items() if u != series_uid), key=lambda s: -s.images)
        volume.metadata["warnings"].append(
            f"The folder holds {len(series)} series; read the largest, {chosen.describe()}, and not "
            f"{'; '.join(s.describe() for s in others)}. Choose another with --series UID."
        )
    return volume


def read_dicom_file_series(
    path: _PathLike,
    *,
    series_uid: Optional[str] = None,
    frame: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    max_voxels: Optional[int] = None,
) -> Volume:
    """Load the series one DICOM file belongs to, from the files beside it (what users expect when they pick one)."""
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as err:
        raise InputError(f"Cannot read {path.name}: not a valid DICOM file ({err}).") from None
    own_uid = str(ds.get("SeriesInstanceUID", ""))
    if series_uid and own_uid and series_uid != own_uid:
        raise InputError(f"{path.name} belongs to series {own_uid}, not {series_uid}; pass its folder instead.")
    volume = read_dicom_series(
        path.parent, series_uid=own_uid or None, frame=frame, recursive=False, progress=progress, cancel=cancel,
        max_voxels=max_voxels,
    )
    volume.metadata["source"] = str(path)
    return volume


# -------------------------------------------------------------------------------------------------- slices & geometry
def _floats(value: Any, n: int) -> Optional[np.ndarray]:
    try:
        out = np.asarray([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) else None


def _first(value: Any) -> Optional[float]:
    """First number of a possibly multi-valued DICOM element (WindowCenter may hold several)."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if len(value) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _temporal_key(ds: Any) -> tuple:
    """Orders images that share a position (time points, echoes) the way the scanner numbered them."""
    keys = ("TemporalPositionIdentifier", "AcquisitionNumber", "EchoNumbers", "TriggerTime", "InstanceNumber")
    return tuple(_first(ds.get(k)) or 0.0 for k in keys)


def _pixel_spacing(ds: Any) -> tuple[float, float]:
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        ps = _floats(ds.get(tag), 2)
        if ps is not None and np.all(ps > 0):
            return float(ps[0]), float(ps[1])
    return 1.0, 1.0


def _slices_of(path: Path, ds: Any) -> list[_Slice]:
    """Every 2D image a file holds; enhanced multi-frame files describe each frame in functional groups."""
    slope = _first(ds.get("RescaleSlope")) or 1.0
    intercept = _first(ds.get("RescaleIntercept")) or 0.0
    sop = str(ds.get("SOPInstanceUID", path))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if frames > 1 and per_frame is not None:
        shared = ds.get("SharedFunctionalGroupsSequence")
        return [_enhanced_frame(path, ds, f, per_frame[f], shared[0] if shared else None, slope, intercept)
                for f in range(frames)]
    position = _floats(ds.get("ImagePositionPatient"), 3)
    orientation = _floats(ds.get("ImageOrientationPatient"), 6)
    if frames > 1:  # cine/multi-frame without per-frame geometry: frames are time points of one plane
        return [_Slice(path, f, position, orientation, _pixel_spacing(ds), slope, intercept, (f,), f"{sop}/{f}")
                for f in range(frames)]
    return [_Slice(path, None, position, orientation, _pixel_spacing(ds), slope, intercept, _temporal_key(ds), sop)]


def _enhanced_frame(path: Path, ds: Any, f: int, group: Any, shared: Any, slope: float, intercept: float) -> _Slice:
    """Frame ``f`` of an enhanced multi-frame file: per-frame attributes override the shared ones."""

    def value(sequence: str, keyword: str) -> Any:
        return _group_value(group, shared, sequence, keyword)

    spacing = _floats(value("PixelMeasuresSequence", "PixelSpacing"), 2)
    frame_slope = _first(value("PixelValueTransformationSequence", "RescaleSlope"))
    frame_intercept = _first(value("PixelValueTransformationSequence", "RescaleIntercept"))
    return _Slice(
        path,
        f,
        _floats(value("PlanePositionSequence", "ImagePositionPatient"), 3),
        _floats(value("PlaneOrientationSequence", "ImageOrientationPatient"), 6),
        (float(spacing[0]), float(spacing[1])) if spacing is not None else _pixel_spacing(ds),
        slope if frame_slope is None else frame_slope,
        intercept if frame_intercept is None else frame_intercept,
        (f,),
        f"{ds.get('SOPInstanceUID', path)}/{f}",
    )


def _group_value(group: Any, shared: Any, sequence: str, keyword: str) -> Any:
    for source in (group, shared):
        seq = source.get(sequence) if source is not None else None
        if seq and keyword in seq[0]:
            return seq[0].get(keyword)
    return None


def _geometry_key(s: _Slice, rows: int, cols: int) -> tuple:
    ori = None if s.orientation is None else tuple(np.round(s.orientation, 3))
    return ori, rows, cols


def _build_volume(
    headers: list[tuple[Path, Any]],
    frame: Optional[int],
    progress: Optional[ProgressCallback],
    cancel: Optional[CancelToken],
    max_voxels: Optional[int] = None,
) -> Volume:
    ds0 = headers[0][1]
    slices, warnings = _main_stack(headers)
    if slices[0].orientation is None or slices[0].position is None:
        slices, frames_meta = _pick_frame([slices], frame)  # no geometry: one plane, images are frames
        origin, direction, dk, gaps = np.zeros(3), np.eye(3), 1.0, []
    else:
        slices, frames_meta, direction, dk, gaps = _order_in_space(slices, frame, ds0, warnings)
        origin = slices[0].position
    _check_same_pixel_spacing(slices)
    claimed = (len(slices), int(ds0.Rows), int(ds0.Columns), int(ds0.get("SamplesPerPixel", 1) or 1))
    check_voxel_count(claimed, max_voxels, f"the DICOM series {ds0.get('SeriesInstanceUID', '')}".strip())

    array = _read_pixels(slices, progress, cancel)
    if array.ndim == 4 and array.shape[0] > 1:
        raise InputError("Colour DICOM series with several slices are not supported; export one frame as PNG.")
    modality = str(ds0.get("Modality", "")) or None
    metadata: dict[str, Any] = {
        "format": "dicom",
        "modality": modality,
        "series_uid": str(ds0.get("SeriesInstanceUID", "")),
        "study_uid": str(ds0.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(ds0.get("FrameOfReferenceUID", "")),
        "series_description": str(ds0.get("SeriesDescription", "")),
        "dicom_files": list(dict.fromkeys(str(s.path) for s in slices)),
        "slice_gaps": gaps,
        "warnings": warnings,
        **frames_meta,
    }
    window = _window(ds0)
    if str(ds0.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        array, window = _invert(array, window)
        warnings.append("MONOCHROME1 image: grey values inverted so that dense structures are bright.")
    if window is not None:
        metadata["window"] = window
    spacing = (slices[0].pixel_spacing[1], slices[0].pixel_spacing[0], dk)
    volume = Volume(array, spacing, tuple(origin), direction, modality, metadata)
    if volume.is_rgb:
        volume.modality = "RGB"  # windowing hint: colour images are used as they are
    return volume


def _main_stack(headers: list[tuple[Path, Any]]) -> tuple[list[_Slice], list[str]]:
    """The largest set of images sharing orientation and size (localisers in the same series are dropped)."""
    groups: dict[tuple, list[_Slice]] = {}
    seen: set[str] = set()
    for path, ds in headers:
        for s in _slices_of(path, ds):
            if s.sop_uid in seen:  # the same image copied twice into the folder
                continue
            seen.add(s.sop_uid)
            groups.setdefault(_geometry_key(s, int(ds.Rows), int(ds.Columns)), []).append(s)
    slices = max(groups.values(), key=len)
    warnings = []
    if len(groups) > 1:
        dropped = sum(len(g) for g in groups.values()) - len(slices)
        warnings.append(
            f"Ignored {dropped} image(s) of this series with another orientation or size (e.g. a localiser)."
        )
    return slices, warnings


def _order_in_space(
    slices: list[_Slice], frame: Optional[int], ds0: Any, warnings: list[str]
) -> tuple[list[_Slice], dict[str, Any], np.ndarray, float, list[dict[str, Any]]]:
    """Sort by position along the slice normal; measure spacing, gaps and tilt (warnings appended)."""
    row_cos, col_cos = slices[0].orientation[:3], slices[0].orientation[3:]
    normal = np.cross(row_cos, col_cos)
    by_position: dict[float, list[_Slice]] = {}
    for s in slices:
        by_position.setdefault(round(float(s.position @ normal), 2), []).append(s)
    slices, frames_meta = _pick_frame([by_position[d] for d in sorted(by_position)], frame)
    distances = np.array([float(s.position @ normal) for s in slices])
    steps = np.diff(distances)
    dk = float(np.median(steps)) if len(steps) else _slice_thickness(ds0)
    gaps = _gaps(steps, dk)
    if gaps:
        first = gaps[0]["between_slices"][0]
        error = float(np.max(np.abs(distances - distances[0] - dk * np.arange(len(distances)))))
        warnings.append(
            f"Irregular slice spacing: {len(gaps)} of {len(steps)} slice distances differ from {dk:.3g} mm "
            f"(first between slices {first} and {first + 1}); the volume assumes uniform spacing, so positions "
            f"from there on are off by up to {error:.3g} mm."
        )
    if len(slices) > 1:
        span = slices[-1].position - slices[0].position
        off_axis = np.linalg.norm(span - (span @ normal) * normal) / max(np.linalg.norm(span), 1e-9)
        if off_axis > 0.01:
            warnings.append(
                "Slices are not stacked along their normal (gantry tilt or sheared acquisition); "
                "the volume is placed along the slice normal."
            )
    return slices, frames_meta, np.column_stack([row_cos, col_cos, normal]), dk, gaps


def _check_same_pixel_spacing(slices: list[_Slice]) -> None:
    """One volume has one in-plane spacing; slices that disagree would be stacked at the wrong size.

    Resampling them onto one grid would change the voxels the label map refers to (and its DICOM SEG could no longer
    reference the source images frame by frame), so such a series is refused rather than silently mis-measured.
    """
    first = np.asarray(slices[0].pixel_spacing)
    for n, s in enumerate(slices[1:], start=1):
        if not np.allclose(s.pixel_spacing, first, rtol=_SPACING_TOLERANCE, atol=0):
            raise InputError(
                f"Slices of this series have different PixelSpacing ({first[0]:g} x {first[1]:g} mm on slice 0, "
                f"{s.pixel_spacing[0]:g} x {s.pixel_spacing[1]:g} mm on slice {n}); resample the series to one "
                "spacing first or choose another series with --series."
            )


def _invert(array: np.ndarray, window: Optional[tuple[float, float]]) -> tuple[np.ndarray, Any]:
    """MONOCHROME1 (minimum = white, some radiographs) → the usual orientation, keeping range and dtype."""
    lo, hi = array.min(), array.max()
    inverted = (hi.astype(np.float64) + lo - array).astype(array.dtype)
    if window is not None:
        window = (float(hi) + float(lo) - window[0], window[1])
    return inverted, window


def _slice_thickness(ds: Any) -> float:
    for tag in ("SpacingBetweenSlices", "SliceThickness"):
        value = _first(ds.get(tag))
        if value and value > 0:
            return value
    return 1.0


def _gaps(steps: np.ndarray, expected: float) -> list[dict[str, Any]]:
    bad = np.nonzero(np.abs(steps - expected) > _GAP_TOLERANCE * abs(expected) + 1e-3)[0]
    return [
        {"between_slices": [int(k), int(k) + 1], "distance_mm": round(float(steps[k]), 4),
         "expected_mm": round(expected, 4)}
        for k in bad
    ]


def _pick_frame(ordered: list[list[_Slice]], frame: Optional[int]) -> tuple[list[_Slice], dict[str, Any]]:
    """One image per position: all positions must hold the same number T of images; ``frame`` picks one of T."""
    counts = {len(group) for group in ordered}
    if counts == {1}:
        return [group[0] for group in ordered], {}
    if len(counts) > 1:
        raise InputError(
            f"Inconsistent series: slice positions hold between {min(counts)} and {max(counts)} images "
            "(missing or duplicated files?). Choose another series with --series or fix the folder."
        )
    frames = counts.pop()
    if frame is None:
        raise InputError(
            f"The series holds {frames} images per slice position (time points or echoes); "
            f"choose one with --frame N (0..{frames - 1})."
        )
    if not 0 <= frame < frames:
        raise InputError(f"--frame {frame} is out of range: the series has frames 0..{frames - 1}.")
    chosen = [sorted(group, key=lambda s: s.temporal_key)[frame] for group in ordered]
    return chosen, {"frames": frames, "frame": int(frame)}


def _read_pixels(
    slices: list[_Slice], progress: Optional[ProgressCallback], cancel: Optional[CancelToken]
) -> np.ndarray:
    """Decode every slice and apply its own RescaleSlope/Intercept (they may differ per slice)."""
    planes, slopes, intercepts = [], [], []
    current: tuple[Optional[Path], Any] = (None, None)
    for n, s in enumerate(slices):
        if cancel is not None:
            cancel.raise_if_cancelled()
        if current[0] != s.path:  # multi-frame files are decoded once and used frame by frame
            current = (s.path, _decode(s.path))
        pixels, rescaled = current[1]
        planes.append(pixels[s.frame] if s.frame is not None else pixels)
        slopes.append(1.0 if rescaled else s.slope)
        intercepts.append(0.0 if rescaled else s.intercept)
        report(progress, "load", _SCAN_SHARE + (1 - _SCAN_SHARE) * (n + 1) / len(slices))
    return _rescale(np.stack(planes), np.array(slopes), np.array(intercepts))


def _rescale(raw: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Modality values in the smallest faithful type: int16 for CT HU, int32 if needed, float32 otherwise."""
    identity = bool(np.all(slopes == 1) and np.all(intercepts == 0))
    if identity and raw.dtype.itemsize <= 2:
        return raw
    shape = (-1,) + (1,) * (raw.ndim - 1)
    values = raw if identity else raw.astype(np.float64) * slopes.reshape(shape) + intercepts.reshape(shape)
    integral = raw.dtype.kind in "iub" and np.all(slopes == np.round(slopes)) and np.all(
        intercepts == np.round(intercepts)
    )
    if integral:
        for dtype in (np.int16, np.int32):
            if values.min() >= np.iinfo(dtype).min and values.max() <= np.iinfo(dtype).max:
                return values.astype(dtype)
    return values.astype(np.float32)


def _decode(path: Path) -> tuple[np.ndarray, bool]:
    """Pixels of one file and whether they are already rescaled.

    pydicom decodes uncompressed, RLE, JPEG baseline and JPEG 2000 data by itself; JPEG Lossless and JPEG-LS need
    optional plugins, so those fall back to SimpleITK's GDCM reader, which applies RescaleSlope/Intercept itself.
    """
    ds = pydicom.dcmread(path)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return np.asarray(ds.pixel_array), False
    except Exception as err:  # pydicom raises RuntimeError/NotImplementedError/ValueError for codec problems
        if syntax is None or not syntax.is_compressed:
            # Uncompressed data that pydicom refuses are damaged (e.g. shorter than Rows x Columns); GDCM would
            # return them padded with whatever memory held, so there is no fallback here.
            raise InputError(f"Cannot read the pixels of {path.name}: {err}.") from None
        try:
            pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        except RuntimeError:
            name = getattr(syntax, "name", "unknown transfer syntax")
            raise InputError(
                f"Cannot decode the pixels of {path.name} ({name}): {err}. Install pylibjpeg, pylibjpeg-libjpeg "
                "and pylibjpeg-openjpeg, or convert the series to NIfTI first."
            ) from None
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        return (pixels if frames > 1 else pixels[0]), True


def _window(ds: Any) -> Optional[tuple[float, float]]:
    centre, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if centre is None or width is None:
        voi = ds.get("SharedFunctionalGroupsSequence")
        voi = voi[0].get("FrameVOILUTSequence") if voi else None
        if voi:
            centre, width = _first(voi[0].get("WindowCenter")), _first(voi[0].get("WindowWidth"))
    if centre is None or width is None or width <= 0:
        return None
    return centre, width
