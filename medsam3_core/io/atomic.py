"""Atomic file output: write to a temporary file in the target folder, then rename over the target.

A crash, an error or a cancel therefore never leaves a half-written label map, report or checkpoint behind, and a
reader never sees a partial file (``os.replace`` is atomic on one file system).

Temporary files are named ``.<name>-<pid>-<random>.partial<suffixes>``. A process killed outright (SIGKILL, power
loss) cannot remove its own, so every write first removes the ``.partial`` files in its folder whose writing process
no longer exists (:func:`remove_stale_partials`); those of a run still in progress are left alone. Temporary files
are created with the permissions of an ordinary new file (``0666`` less the umask, usually ``0644``), so every
output ends up with the same mode whatever wrote it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_path", "partial_path", "remove_path", "remove_stale_partials"]

_PARTIAL = re.compile(r"^\..+-(\d+)-[0-9a-f]{8}\.partial(\.[^/]*)?$")


def partial_path(target: Path) -> Path:
    """A new, unused temporary name beside ``target`` keeping its full suffix (writers pick the format from it)."""
    suffix = "".join(target.suffixes)
    stem = target.name[: len(target.name) - len(suffix)] if suffix else target.name
    return target.with_name(f".{stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}.partial{suffix}")


def _process_exists(pid: int) -> bool:
    """Whether a process with this id runs on this machine (an unknown answer counts as yes: keep the file)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return _windows_process_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. someone else's live process
    return True


def _windows_process_exists(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() != 87  # ERROR_INVALID_PARAMETER: no such process
    try:
        code = ctypes.c_ulong()
        return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def remove_stale_partials(folder: Union[str, Path]) -> list[Path]:
    """Delete the temporary files a killed writer left in ``folder``; returns what was removed."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _PARTIAL.match(entry.name)
        if match and entry.is_file(follow_symlinks=False) and not _process_exists(int(match.group(1))):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


def create_partial(target: Path) -> Path:
    """Create (empty, mode ``0666 & ~umask``) and return a fresh temporary file for ``target``."""
    tmp = partial_path(target)
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    return tmp


@contextlib.contextmanager
def atomic_path(target: Union[str, Path]) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` with the same suffixes; rename it to ``target`` on success.

    The temporary file keeps the target's full suffix (``.nii.gz``, ``.nrrd`` …) because writers such as SimpleITK
    choose the format from the file name. On any exception the temporary file is removed and ``target`` is left
    untouched. Stale temporaries of killed runs in the same folder are removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(target.parent)
    tmp = create_partial(target)
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
