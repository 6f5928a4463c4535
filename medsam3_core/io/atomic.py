"""Atomic file output: write to a temporary file in the target folder, then rename over the target.

A crash, an error or a cancel therefore never leaves a half-written label map, report or checkpoint behind, and a
reader never sees a partial file (``os.replace`` is atomic on one file system).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_path", "remove_path"]


@contextlib.contextmanager
def atomic_path(target: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` with the same suffixes; rename it to ``target`` on success.

    The temporary file keeps the target's full suffix (``.nii.gz``, ``.nrrd`` …) because writers such as SimpleITK
    choose the format from the file name. On any exception the temporary file is removed and ``target`` is left
    untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name.split('.')[0]}-", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_path(path: Union[str, Path]) -> None:
    """Remove a file or a folder tree, whichever ``path`` is (already gone is fine): how outputs of a failed or
    cancelled step are taken back."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
