"""Checks that run on an input *before* its voxels are trusted or allocated.

A file header is a claim, not a fact: a truncated download still has a complete header, and a few hundred bytes of
header can claim gigabytes of voxels. Readers therefore ask three questions before decoding anything:

* Is the path a regular file or a folder? Opening a FIFO or a device blocks forever or reads without end.
* Is the claimed size acceptable? ``max_voxels`` (``--max-voxels``, default :data:`DEFAULT_MAX_VOXELS`) bounds what a
  header may make us allocate; 2D pictures have their own, lower bound (:data:`MAX_IMAGE_PIXELS`) because a picture
  that large is always a mistake or an attack (a 20000 × 20000 PNG compresses to a few hundred KB).
* Can the file hold what the header claims? Uncompressed data must be all there; deflate (gzip, zlib, PNG) never
  compresses better than about 1032:1, so a smaller file cannot hold the claimed voxels either.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from medsam3_core.errors import InputError

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "MAX_IMAGE_PIXELS",
    "DEFLATE_MAX_RATIO",
    "MIN_SLICE_PIXELS",
    "check_regular_path",
    "is_regular_file",
    "check_voxel_count",
    "check_data_fits",
    "check_slice_size",
]

DEFAULT_MAX_VOXELS = 2**30  # about 1.07e9 voxels: a 1024 × 1024 × 1024 volume, 2 GB as int16
MAX_IMAGE_PIXELS = 2**26  # 8192 × 8192 pixels for a 2D picture
DEFLATE_MAX_RATIO = 1032  # deflate's best case: one 258-byte match per ~2 bits, plus block overhead
MIN_SLICE_PIXELS = 4  # smaller slices carry no anatomy (and a 3-pixel side makes RGB channel order ambiguous)


def check_regular_path(path: Path) -> os.stat_result:
    """``os.stat`` of ``path``; anything but a regular file or a folder (FIFO, socket, device) is refused.

    Checked with ``stat`` *before* opening, because opening a FIFO for reading blocks until a writer appears.
    """
    try:
        info = os.stat(path)
    except OSError as err:
        raise InputError(f"Cannot read {path}: {err.strerror or err}.") from None
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
        raise InputError(f"Cannot read {path}: not a regular file (a pipe, socket or device); pass an image file.")
    return info


def is_regular_file(path: Path) -> bool:
    """True for a regular file (following links); FIFOs and devices in a DICOM folder are skipped with this."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def check_voxel_count(shape: Sequence[int], max_voxels: Optional[int], what: str, *, picture: bool = False) -> int:
    """The number of voxels ``shape`` claims, refused when above the limit (decided from a header, before allocating).

    Args:
        shape: the claimed size (any order; colour components included when they cost memory).
        max_voxels: the limit; ``None`` means :data:`DEFAULT_MAX_VOXELS`.
        what: the file name, for the message.
        picture: a 2D picture, also bounded by :data:`MAX_IMAGE_PIXELS`.
    """
    limit = DEFAULT_MAX_VOXELS if max_voxels is None else int(max_voxels)
    count = int(np.prod([int(n) for n in shape], dtype=object))
    if picture and count > min(limit, MAX_IMAGE_PIXELS):
        raise InputError(
            f"Cannot read {what}: its header claims a {' × '.join(map(str, shape))} picture, more than "
            f"{min(limit, MAX_IMAGE_PIXELS):,} pixels; scale the picture down first."
        )
    if count > limit:
        raise InputError(
            f"Cannot read {what}: its header claims {count:,} voxels ({' × '.join(map(str, shape))}), more than the "
            f"limit of {limit:,}; raise it with --max-voxels if the file is genuine."
        )
    return count


def check_data_fits(what: str, available: int, claimed: int, *, compressed: bool) -> None:
    """Refuse a file too small to hold the ``claimed`` bytes of voxel data its header promises.

    ``available`` is the number of data bytes in the file (after the header). Uncompressed data must be complete;
    deflate-compressed data can shrink by at most :data:`DEFLATE_MAX_RATIO`.
    """
    needed = -(-claimed // DEFLATE_MAX_RATIO) if compressed else claimed
    if available < needed:
        detail = (f"it holds {available:,} bytes of compressed data, too few for {claimed:,} bytes of voxels"
                  if compressed else f"it holds {available:,} of the {claimed:,} bytes of voxels its header promises")
        raise InputError(f"Cannot read {what}: the file is truncated or its header is wrong ({detail}).")


def check_slice_size(shape: Sequence[int], slice_axis_index: int) -> None:
    """Refuse volumes whose slices (the two axes other than ``slice_axis_index``) are too small to segment.

    A 1 × 1 picture or a 5 × 1 × 1 volume has no anatomy in it; the engine's resizing needs a real 2D slice.
    """
    in_plane = [int(n) for axis, n in enumerate(shape[:3]) if axis != slice_axis_index]
    if min(in_plane) < MIN_SLICE_PIXELS:
        raise InputError(
            f"The image is too small to segment: its slices are {in_plane[1]} × {in_plane[0]} pixels, and at least "
            f"{MIN_SLICE_PIXELS} × {MIN_SLICE_PIXELS} are needed. Check that the right file or --slice-axis was given."
        )
