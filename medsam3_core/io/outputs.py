"""Output paths checked up front, before a model is loaded or a minute of compute is spent.

Writing is the last step of a run, so a mistyped ``-o some_file/out`` would otherwise only fail after the model was
loaded and the whole volume segmented (and then with a traceback). These checks decide from the file system alone
whether each output can be created: every existing part of the path must be a folder we may write into, a folder
target must not be a file and a file target must not be a folder. They create nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np

from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume

__all__ = ["check_output_folder", "check_output_file", "check_output_targets", "check_format_holds"]

_PathLike = Union[str, Path]
_NIFTI_FORMATS = ("nii", "nii.gz")
_ORTHOGONAL_TOLERANCE = 1e-4


def _check_creatable(path: Path, option: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder (so ``path`` can be created)."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"Cannot create {option} {path}: {parent} is a file, not a folder; choose another path.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"Cannot create {option} {path}: the folder {parent} is not writable.")


def check_output_folder(path: _PathLike, option: str = "output folder") -> Path:
    """``path`` is, or can be created as, a writable folder. ``option`` names it in the message (e.g. ``--png``)."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError(f"Cannot use {option} {path}: it is a file, not a folder; choose a folder name.")
        if not os.access(path, os.W_OK | os.X_OK):
            raise InputError(f"Cannot write into {option} {path}: the folder is not writable.")
        return path
    _check_creatable(path, option)
    return path


def check_output_file(path: _PathLike, option: str = "output file") -> Path:
    """``path`` can be written as a file: not an existing folder, and its folder exists or can be created."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise InputError(f"Cannot write {option} {path}: it is a folder; give a file name.")
    if path.parent.exists():
        check_output_folder(path.parent, f"the folder of {option}")
    else:
        _check_creatable(path, option)
    return path


def check_output_targets(
    output: _PathLike, *, dicom_seg: Optional[_PathLike] = None, png: Optional[_PathLike] = None
) -> None:
    """All outputs of ``medsam3 infer`` on disk: the output folder, the ``--dicom-seg`` file and the ``--png`` folder
    can be written (that the SEG is named ``.dcm`` is checked with the rest of the output plan,
    :meth:`medsam3_core.cli.segment_case.OutputPlan.check`)."""
    check_output_folder(output, "output folder")
    if dicom_seg:
        check_output_file(dicom_seg, "--dicom-seg")
    if png:
        check_output_folder(png, "--png folder")


def check_format_holds(volume: Volume, fmt: str) -> None:
    """Refuse a format that cannot store ``volume``'s grid exactly (checked right after reading the input).

    NIfTI stores orientation as a rotation (qform), so ITK would silently make a sheared (non-orthogonal) direction
    orthogonal and the label map would no longer lie on the input's voxels. NRRD and MetaImage store the direction
    matrix as it is, so those formats are offered instead.
    """
    fmt = fmt.lower().lstrip(".")
    if fmt in _NIFTI_FORMATS and not is_orthogonal(volume.direction):
        raise InputError(
            f"The input's voxel axes are not perpendicular (sheared grid), which {fmt} cannot store; "
            "use --format nrrd or --format mha to keep the grid exactly."
        )


def is_orthogonal(direction: np.ndarray) -> bool:
    """True when the direction matrix's columns are perpendicular unit vectors."""
    d = np.asarray(direction, dtype=float)
    return bool(np.allclose(d.T @ d, np.eye(len(d)), atol=_ORTHOGONAL_TOLERANCE))
