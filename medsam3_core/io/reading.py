"""Read and write image volumes with their geometry: NIfTI, NRRD, MetaImage, DICOM series and 2D pictures.

Every reader returns a :class:`~medsam3_core.io.geometry.Volume` whose spacing, origin and direction are in LPS exactly
as SimpleITK reports them (NIfTI's RAS header is converted by ITK on read and back on write), so a label map written
with :func:`write_volume` lands on the voxels it was computed on. User mistakes (missing path, unknown or corrupt
file, 4D data without a frame) raise :class:`~medsam3_core.errors.InputError` with one line that says what to do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import SimpleITK as sitk

from medsam3_core.io import dicom, nifti
from medsam3_core.io.atomic import atomic_path
from medsam3_core.io.containers import check_attached_data
from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume
from medsam3_core.io.outputs import check_format_holds
from medsam3_core.io.validation import check_data_fits, check_regular_path, check_voxel_count
from medsam3_core.io.verify import verify_written_volume
from medsam3_core.progress import CancelToken, ProgressCallback, report

__all__ = [
    "READ_FORMATS",
    "WRITE_FORMATS",
    "read_volume",
    "write_volume",
    "volume_to_sitk",
    "volume_from_sitk",
    "format_of",
]

# Suffix (lower case, longest first where it matters) → format name recorded in metadata["format"].
READ_FORMATS: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "metaimage",
    ".mhd": "metaimage",
    ".png": "image2d",
    ".jpg": "image2d",
    ".jpeg": "image2d",
    ".tif": "image2d",
    ".tiff": "image2d",
    ".bmp": "image2d",
    ".dcm": "dicom",
}
_FORMAT_NAMES = {"nifti": "NIfTI", "nrrd": "NRRD", "metaimage": "MetaImage", "image2d": "image"}
# MetaImage header+raw (.mhd) and .nhdr are left out on purpose: two files cannot be replaced atomically.
WRITE_FORMATS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".png")

_PathLike = Union[str, Path]

# ITK reports recoverable oddities (e.g. a non-orthonormal direction it had to fix) as warnings printed straight to
# stderr, where they interleave with our progress and one-line errors. The readers check what matters themselves and
# report it as a warning of the result, so ITK's own printing is switched off.
sitk.ProcessObject_SetGlobalWarningDisplay(False)


def format_of(path: _PathLike) -> Optional[str]:
    """The suffix of ``path`` that names its format (``".nii.gz"``, ``".png"`` …), or ``None`` if unknown."""
    name = Path(path).name.lower()
    for suffix in sorted(READ_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return None


def _is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry ``DICM`` after a 128-byte preamble, whatever their name."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_volume(
    path: _PathLike,
    *,
    series_uid: Optional[str] = None,
    modality: Optional[str] = None,
    frame: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    max_voxels: Optional[int] = None,
) -> Volume:
    """Load an image volume (or a 2D picture as a one-slice volume) with its geometry.

    Args:
        path: a NIfTI/NRRD/MetaImage file, a 2D PNG/JPEG/TIFF/BMP, a folder holding a DICOM series (searched
            recursively), or one DICOM file (its whole series is loaded from the file's folder).
        series_uid: which DICOM series to load when the folder holds several (default: the one with most slices).
        modality: ``"CT"``, ``"MR"`` … overriding what the file says (NIfTI/NRRD/MHA do not record it).
        frame: index of the time point / volume to take from 4D data; required for 4D input.
        progress, cancel: reported/checked while a DICOM series is read (the only slow reader).
        max_voxels: refuse (from the header, before allocating) images claiming more voxels; default
            :data:`~medsam3_core.io.validation.DEFAULT_MAX_VOXELS`.

    Raises:
        InputError: missing path, unsupported, truncated or corrupt file, a header claiming more than ``max_voxels``,
            a pipe or device, empty folder, 4D data without ``frame``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputError(f"Input not found: {path}. Check the path (use 'demo' for the bundled demo scan).")
    check_regular_path(path)
    if not os.access(path, os.R_OK | (os.X_OK if path.is_dir() else 0)):
        raise InputError(f"Cannot read {path}: permission denied.")
    if path.is_dir():
        images = sorted(p.name for p in path.iterdir() if format_of(p) not in (None, ".dcm"))
        more = " …" if len(images) > 3 else ""
        hint = f" The folder holds {', '.join(images[:3])}{more}: pass a file." if images else ""
        volume = dicom.read_dicom_series(
            path, series_uid=series_uid, frame=frame, progress=progress, cancel=cancel, empty_hint=hint,
            max_voxels=max_voxels,
        )
    else:
        suffix = format_of(path)
        if suffix == ".dcm" or (suffix is None and _is_dicom_file(path)):
            volume = dicom.read_dicom_file_series(path, series_uid=series_uid, frame=frame, progress=progress,
                                                  cancel=cancel, max_voxels=max_voxels)
        elif suffix is None:
            supported = ", ".join(sorted(set(READ_FORMATS)))
            raise InputError(
                f"Cannot read {path.name}: unknown file type. Supported: {supported}, or a folder of DICOM files."
            )
        else:
            report(progress, "load", 0.0)
            volume = _read_checked(path, READ_FORMATS[suffix], frame, max_voxels)
            report(progress, "load", 1.0)
    if modality:
        volume.modality = modality
        volume.metadata["modality"] = modality
    return volume


def _read_checked(path: Path, fmt: str, frame: Optional[int], max_voxels: Optional[int]) -> Volume:
    """Check what the header claims against the limit and the file, then read (NIfTI-2 through nibabel)."""
    if fmt == "nifti":
        header = nifti.inspect_nifti(path)
        check_voxel_count(header.shape[:3], max_voxels, path.name)
        nifti.check_complete(path, header)
        if header.version == 2:
            array, spacing, origin, direction = nifti.read_nifti2(path)
            metadata: dict[str, Any] = {"source": str(path), "format": fmt, "nifti_version": 2}
            if array.ndim == 4:
                frame = _check_frame(frame, array.shape[0])
                metadata.update(frames=int(array.shape[0]), frame=frame)
                array = array[frame]
            if array.ndim == 2:
                metadata["dimension"] = 2
            return Volume(array, tuple(spacing), tuple(origin), direction, None, metadata)
    return _read_with_sitk(path, fmt, frame, max_voxels)


def _check_claimed_size(path: Path, fmt: str, reader: sitk.ImageFileReader, max_voxels: Optional[int]) -> None:
    """Refuse, from the header alone, an image larger than allowed or larger than the file can hold."""
    size = reader.GetSize()
    components = reader.GetNumberOfComponents()
    picture = fmt == "image2d" and (len(size) == 2 or size[2] == 1)  # a multi-page TIFF is a volume
    check_voxel_count(list(size[:3]), max_voxels, path.name, picture=picture)
    if fmt in ("nrrd", "metaimage"):
        itemsize = sitk.GetArrayViewFromImage(sitk.Image([1, 1], reader.GetPixelID())).itemsize
        check_attached_data(path, int(np.prod(size, dtype=object)) * components * itemsize)
    elif picture and path.suffix.lower() == ".png":
        check_data_fits(path.name, path.stat().st_size, int(np.prod(size, dtype=object)), compressed=True)


def _read_with_sitk(path: Path, fmt: str, frame: Optional[int], max_voxels: Optional[int]) -> Volume:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
        _check_claimed_size(path, fmt, reader, max_voxels)
        size = reader.GetSize()
        if len(size) == 4:
            frame = _check_frame(frame, size[3])
            # Extract one time point while reading; the 4th axis collapses and the 3D geometry is kept.
            reader.SetExtractIndex([0, 0, 0, frame])
            reader.SetExtractSize([size[0], size[1], size[2], 0])
        image = reader.Execute()
    except RuntimeError as err:
        raise InputError(
            f"Cannot read {path.name}: the file is damaged or not a valid {_FORMAT_NAMES[fmt]} file "
            f"({_itk_reason(err)})."
        ) from None
    metadata: dict[str, Any] = {"source": str(path), "format": fmt}
    if len(size) == 4 and frame is not None:  # already extracted while reading
        metadata.update(frames=int(size[3]), frame=frame)
        frame = None
    return volume_from_sitk(image, frame=frame, metadata=metadata)


def _itk_reason(err: Exception) -> str:
    """The last meaningful line of an ITK exception (its first lines are C++ file positions)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    reason = lines[-1] if lines else type(err).__name__
    return reason.removeprefix("sitk::ERROR:").strip()


def volume_from_sitk(
    image: sitk.Image,
    *,
    frame: Optional[int] = None,
    modality: Optional[str] = None,
    metadata: Optional[dict[str, Any]] = None,
) -> Volume:
    """Convert a 2D, 3D or 4D SimpleITK image to a :class:`Volume` (LPS geometry copied verbatim).

    2D images become one-slice volumes (spacing 1 mm along k); colour pictures keep their RGB channels and drop
    alpha. A 4D image (or a multi-component 3D volume, e.g. a vector NRRD) needs ``frame`` to pick one volume.
    """
    dim = image.GetDimension()
    ncomp = image.GetNumberOfComponentsPerPixel()
    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind == "c":
        raise InputError("Complex-valued images are not supported; export the magnitude image first.")
    spacing = np.ones(3)
    origin = np.zeros(3)
    direction = np.eye(3)
    n = min(dim, 3)
    spacing[:n] = image.GetSpacing()[:n]
    origin[:n] = image.GetOrigin()[:n]
    direction[:n, :n] = np.asarray(image.GetDirection()).reshape(dim, dim)[:n, :n]
    meta = dict(metadata or {})

    if dim == 2:
        array = array[None]
        meta["dimension"] = 2  # written back as a 2D image (see write_volume)
    elif dim == 3 and ncomp in (3, 4) and image.GetSize()[2] == 1:
        pass  # a colour picture stored as a one-slice volume: keep it RGB
    elif dim == 4 or (dim == 3 and ncomp > 1):
        frames = array.shape[0] if dim == 4 else ncomp
        frame = _check_frame(frame, frames)
        array = array[frame] if dim == 4 else array[..., frame]
        meta.update(frames=int(frames), frame=int(frame))
    elif dim != 3:
        raise InputError(f"{dim}D images are not supported; expected a 2D image or a 3D/4D volume.")

    if array.ndim == 4:  # colour picture: (1, H, W, C)
        if array.shape[-1] == 4:
            array = array[..., :3]
        elif array.shape[-1] == 2:  # grey + alpha
            array = array[..., 0]
        elif array.shape[-1] != 3:
            raise InputError(f"Unsupported number of colour channels: {array.shape[-1]}.")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    volume = Volume(np.ascontiguousarray(array), tuple(spacing), tuple(origin), direction, modality, meta)
    if volume.is_rgb and volume.modality is None:
        volume.modality = "RGB"
    return volume


def _check_frame(frame: Optional[int], frames: int) -> int:
    """Validate ``--frame`` against the number of frames; a single-frame "4D" file needs no choice."""
    if frame is None:
        if frames == 1:
            return 0
        raise InputError(f"The image is 4D ({frames} frames/volumes); choose one with --frame N (0..{frames - 1}).")
    if not 0 <= frame < frames:
        raise InputError(f"--frame {frame} is out of range: the image has frames 0..{frames - 1}.")
    return int(frame)


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """A 3D SimpleITK image (vector pixels for RGB) with the volume's exact spacing, origin and direction."""
    array = np.asarray(volume.array)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype == np.float16:
        array = array.astype(np.float32)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=volume.is_rgb)
    image.SetSpacing([float(s) for s in volume.spacing])
    image.SetOrigin([float(o) for o in volume.origin])
    image.SetDirection([float(d) for d in np.asarray(volume.direction).ravel()])
    return image


def write_volume(volume: Volume, path: _PathLike) -> Path:
    """Write ``volume`` to ``path`` (format from the suffix) atomically, keeping its geometry exactly.

    ``.nii.gz``/``.nii``/``.nrrd``/``.mha`` take any volume (compressed where the format allows); ``.png`` takes a
    one-slice 8/16-bit grey image or 8-bit RGB (a 2D label map or picture; PNG has no geometry). A volume read from
    a 2D file (``metadata["dimension"] == 2``) is written as a 2D image again, so 512 × 512 in gives 512 × 512 out.
    The written file is read back and compared before it is renamed into place (ITK does not report every failed
    write, e.g. a file-size limit), so a published file is always complete.

    Raises:
        InputError: unsupported suffix, data the format cannot hold, or an unwritable or short-written destination.
    """
    path = Path(path).expanduser()
    suffix = next((s for s in WRITE_FORMATS if path.name.lower().endswith(s)), None)
    if suffix is None:
        raise InputError(f"Cannot write {path.name}: use one of {', '.join(WRITE_FORMATS)}.")
    if suffix in (".nii", ".nii.gz"):
        check_format_holds(volume, suffix)
    image = volume_to_sitk(volume)
    if suffix == ".png":
        image = _png_image(volume, image)
    elif volume.metadata.get("dimension") == 2 and volume.shape[0] == 1:
        image = image[:, :, 0]
    try:
        with atomic_path(path) as tmp:
            sitk.WriteImage(image, str(tmp), useCompression=suffix != ".png")
            verify_written_volume(tmp, image, path.name)
    except (RuntimeError, OSError) as err:
        raise InputError(f"Cannot write {path}: {_itk_reason(err)}. Check the folder exists and is writable.") from None
    return path


def _png_image(volume: Volume, image: sitk.Image) -> sitk.Image:
    if volume.shape[0] != 1:
        raise InputError(f"PNG holds one slice, but the volume has {volume.shape[0]}; use .nii.gz instead.")
    dtype = volume.array.dtype
    ok = dtype in (np.uint8, bool) or (dtype == np.uint16 and not volume.is_rgb)
    if not ok:
        raise InputError(f"PNG stores 8/16-bit unsigned grey or 8-bit RGB, not {dtype}; use .nii.gz instead.")
    return image[:, :, 0]
