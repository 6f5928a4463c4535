"""NIfTI files checked before ITK reads them, and NIfTI-2 read with nibabel (ITK only reads NIfTI-1).

ITK's NIfTI reader does not notice a short file: a ``.nii.gz`` cut in half or a ``.nii`` missing its end are read
without an error, the missing voxels silently zero. :func:`inspect_nifti` therefore parses the fixed-size header
itself (348 bytes for NIfTI-1, 540 for NIfTI-2) and :func:`check_complete` proves the data are all there before the
voxels are used: the file size for ``.nii``, and for ``.nii.gz`` the uncompressed length stored in the gzip trailer
(streaming through the data to count only when the trailer disagrees, e.g. for multi-member gzip).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medsam3_core.errors import InputError
from medsam3_core.io.validation import check_data_fits

__all__ = ["NiftiHeader", "inspect_nifti", "check_complete", "read_nifti2"]

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
_CHUNK = 1 << 20


@dataclass(frozen=True)
class NiftiHeader:
    """What the header claims: version (1 or 2), data shape (i, j, k, …), bytes per voxel and where data start."""

    version: int
    shape: tuple[int, ...]
    itemsize: int
    offset: int
    compressed: bool

    @property
    def data_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=object)) * self.itemsize

    @property
    def file_bytes(self) -> int:
        """Bytes the (uncompressed) file must hold: header, extensions and every voxel."""
        return self.offset + self.data_bytes


def _open(path: Path, compressed: bool) -> Any:
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def inspect_nifti(path: Path) -> NiftiHeader:
    """Parse the header of a single-file NIfTI-1 or NIfTI-2 (``.nii``/``.nii.gz``), reading only its first bytes."""
    compressed = path.name.lower().endswith(".gz")
    try:
        with _open(path, compressed) as f:
            raw = f.read(540)
    except (OSError, EOFError, zlib.error) as err:
        raise InputError(f"Cannot read {path.name}: the file is damaged or not a valid NIfTI file ({err}).") from None
    for endian in "<>":
        if len(raw) >= 348 and struct.unpack(endian + "i", raw[:4])[0] == 348:
            dims = struct.unpack(endian + "8h", raw[40:56])
            itemsize = struct.unpack(endian + "h", raw[72:74])[0] // 8
            offset = int(struct.unpack(endian + "f", raw[108:112])[0])
            return _header(path, 1, dims, itemsize, max(offset, 352), compressed)
        if len(raw) >= 540 and struct.unpack(endian + "i", raw[:4])[0] == 540:
            dims = struct.unpack(endian + "8q", raw[16:80])
            itemsize = struct.unpack(endian + "h", raw[14:16])[0] // 8
            offset = struct.unpack(endian + "q", raw[168:176])[0]
            return _header(path, 2, dims, itemsize, max(offset, 544), compressed)
    raise InputError(f"Cannot read {path.name}: the file is damaged or not a valid NIfTI file (no NIfTI header).")


def _header(path: Path, version: int, dims: tuple, itemsize: int, offset: int, compressed: bool) -> NiftiHeader:
    ndim = int(dims[0])
    shape = tuple(int(d) for d in dims[1:1 + ndim]) if 1 <= ndim <= 7 else ()
    if not shape or any(n < 1 for n in shape) or itemsize < 1:
        raise InputError(f"Cannot read {path.name}: its NIfTI header is damaged (dimensions {list(dims)}).")
    return NiftiHeader(version, shape, itemsize, offset, compressed)


def check_complete(path: Path, header: NiftiHeader) -> None:
    """Refuse a file that holds fewer bytes than its header promises (truncated download, lying header)."""
    size = path.stat().st_size
    if not header.compressed:
        check_data_fits(path.name, size - header.offset, header.data_bytes, compressed=False)
        return
    check_data_fits(path.name, size, header.data_bytes, compressed=True)  # cheap bound first
    with open(path, "rb") as f:
        f.seek(-4, 2)
        stored = struct.unpack("<I", f.read(4))[0]  # ISIZE: uncompressed length mod 2**32
    if stored == header.file_bytes % 2**32:
        return
    check_data_fits(path.name, _uncompressed_length(path, header.file_bytes), header.file_bytes, compressed=False)


def _uncompressed_length(path: Path, enough: int) -> int:
    """Bytes a gzip file decompresses to (stops counting at ``enough``); a cut-off stream counts what it holds."""
    total = 0
    try:
        with gzip.open(path, "rb") as f:
            while total < enough and (chunk := f.read(_CHUNK)):
                total += len(chunk)
    except (EOFError, OSError, zlib.error):
        pass  # "Compressed file ended before the end-of-stream marker": the count so far is what the file holds
    return total


def read_nifti2(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Voxels (ITK order: ``[t,] [k,] j, i``) and LPS spacing, origin, 3×3 direction of a NIfTI-2 file, via nibabel.

    The geometry is nibabel's best affine (sform when set, else qform), converted from RAS to LPS.
    """
    import nibabel as nib

    try:
        image = nib.Nifti2Image.from_filename(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel raises several types for damaged files
        raise InputError(f"Cannot read {path.name}: the file is damaged or not a valid NIfTI-2 file ({err}).") from None
    if data.ndim > 4:
        raise InputError(f"Cannot read {path.name}: {data.ndim}D NIfTI data are not supported.")
    lps = _LPS_FROM_RAS @ np.asarray(image.affine, dtype=float)[:3]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"Cannot read {path.name}: its NIfTI-2 affine is singular.")
    array = np.ascontiguousarray(data.transpose(tuple(reversed(range(data.ndim)))))
    return array, spacing, lps[:, 3], lps[:, :3] / spacing
