"""Atomic file output: write to a temporary file in the target folder, then rename over the target.

A crash, an error or a cancel therefore never leaves a half-written label map, report or checkpoint behind, and a
reader never sees a partial file (``os.replace`` is atomic on one file system).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_path"]


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
