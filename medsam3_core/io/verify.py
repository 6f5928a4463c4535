"""Proof that a file was written completely, checked before it is renamed into place.

ITK's writers do not report every failed write: with a file-size limit (``ulimit -f``) or a full disk the label map
is cut short and the write still "succeeds". So every image file is read back and compared voxel for voxel (and
geometry for geometry) with what was meant to be written, and a NIfTI file additionally has to hold every byte its
header promises (ITK's NIfTI reader would not notice a short file either). Only then may the atomic rename publish it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medsam3_core.errors import InputError

__all__ = ["verify_written_volume", "verify_written_size", "short_write_error"]

_GEOMETRY_TOLERANCE = 1e-5


def short_write_error(name: str, detail: str) -> InputError:
    """The one-line error for an output that did not read back as written."""
    return InputError(
        f"Cannot write {name}: the file did not read back as written ({detail}). "
        "Check the disk has space and no file-size limit applies."
    )


def verify_written_volume(path: Path, image: sitk.Image, name: str) -> None:
    """Read ``path`` back and require exactly ``image``'s voxels and geometry (PNG: voxels only)."""
    from medsam3_core.io import nifti
    from medsam3_core.io.containers import check_attached_data

    path = Path(path)
    try:
        if path.name.lower().endswith((".nii", ".nii.gz")):
            nifti.check_complete(path, nifti.inspect_nifti(path))
        elif path.suffix.lower() in (".nrrd", ".mha"):
            check_attached_data(path, sitk.GetArrayViewFromImage(image).nbytes)
        written = sitk.ReadImage(str(path))
    except (InputError, RuntimeError, OSError) as err:
        raise short_write_error(name, str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__)
    if written.GetSize() != image.GetSize():
        raise short_write_error(name, f"size {written.GetSize()} instead of {image.GetSize()}")
    expected = sitk.GetArrayViewFromImage(image)
    nan_is_value = expected.dtype.kind == "f"
    if not np.array_equal(sitk.GetArrayViewFromImage(written), expected, equal_nan=nan_is_value):
        raise short_write_error(name, "the voxels differ")
    if path.suffix.lower() == ".png":
        return
    for what in ("GetSpacing", "GetOrigin", "GetDirection"):
        if not np.allclose(getattr(written, what)(), getattr(image, what)(), atol=_GEOMETRY_TOLERANCE):
            raise short_write_error(name, f"{what[3:].lower()} changed")


def verify_written_size(path: Path, expected: int, name: str) -> None:
    """Require a file written by Python (report, DICOM SEG, picture) to have the ``expected`` size in bytes."""
    size = Path(path).stat().st_size
    if size != expected:
        raise short_write_error(name, f"{size} of {expected} bytes")
