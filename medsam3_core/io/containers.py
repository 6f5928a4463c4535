"""Where the voxels of a single-file NRRD or MetaImage start, and whether they are deflate-compressed.

Both formats put a short text header in front of the voxel data. Knowing where the data start lets the reader compare
the bytes actually present with what the header claims (:func:`medsam3_core.io.validation.check_data_fits`) before
ITK allocates the whole image; ITK itself only notices a short file after allocating.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from medsam3_core.io.validation import check_data_fits

__all__ = ["attached_data", "check_attached_data"]

_HEADER_LIMIT = 1 << 16  # headers are a few hundred bytes; more means this is not a header we understand


def check_attached_data(path: Path, claimed: int) -> None:
    """Refuse a ``.nrrd``/``.mha`` too short for the ``claimed`` bytes of voxels (or, for a compressed MetaImage,
    for the compressed size its header states); files this module cannot parse are left to ITK."""
    layout = attached_data(path)
    if layout is None:
        return
    offset, compressed, stored = layout
    available = path.stat().st_size - offset
    if stored is not None:
        check_data_fits(path.name, available, stored, compressed=False)
    check_data_fits(path.name, available, claimed, compressed=compressed)


def attached_data(path: Path) -> Optional[tuple[int, bool, Optional[int]]]:
    """``(offset of the voxel data, deflate-compressed?, compressed size if stated)`` for a ``.nrrd``/``.mha`` holding
    its own data.

    ``None`` when the data live in another file, use another compression (bzip2 has no useful ratio bound) or the
    header cannot be parsed here; the caller then leaves the checks to ITK.
    """
    with open(path, "rb") as f:
        head = f.read(_HEADER_LIMIT)
    suffix = path.suffix.lower()
    if suffix == ".nrrd":
        end = head.find(b"\n\n")
        if not head.startswith(b"NRRD") or end < 0:
            return None
        fields = _fields(head[:end], b":")
        if b"data file" in fields or b"datafile" in fields:
            return None
        encoding = fields.get(b"encoding", b"raw").lower()
        if encoding not in (b"raw", b"gzip", b"gz"):
            return None
        return end + 2, encoding != b"raw", None
    if suffix == ".mha":
        key = head.find(b"ElementDataFile")
        line_end = head.find(b"\n", key)
        if key < 0 or line_end < 0:
            return None
        fields = _fields(head[:line_end], b"=")
        if fields.get(b"ElementDataFile", b"").upper() != b"LOCAL":
            return None
        compressed = fields.get(b"CompressedData", b"False").lower() == b"true"
        stored = fields.get(b"CompressedDataSize", b"")
        return line_end + 1, compressed, int(stored) if compressed and stored.isdigit() else None
    return None


def _fields(header: bytes, separator: bytes) -> dict[bytes, bytes]:
    out = {}
    for line in header.splitlines():
        name, sep, value = line.partition(separator)
        if sep:
            out[name.strip().strip(b"=")] = value.strip().strip(b"=").strip()
    return out
