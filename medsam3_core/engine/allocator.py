"""Let glibc reuse freed tensor memory instead of handing it back to the kernel after every batch (Linux only).

Why: the engine works in batches. Every detector-head call and every tracker step allocates tensors of a few MB to a
few tens of MB and frees them again. With glibc's defaults such blocks are served by fresh ``mmap`` calls (above the
adaptive mmap threshold) or trimmed off the top of the heap when freed, so every step makes the kernel fault in and
zero the same memory again. Measured on the tiny benchmark configuration: 9 % of the engine's CPU time was kernel
time, against about 0 % for the stock pipeline, whose per-object tensors are small (bench/RESULTS.md).

:func:`reuse_freed_memory` raises glibc's mmap threshold to its maximum (32 MB on 64-bit) and its trim threshold to
512 MB through ``mallopt``, so those blocks come from the heap and stay there for the next step. PyTorch's CPU
performance guide gets the same effect by preloading jemalloc or tcmalloc; ``mallopt`` needs no preload. The peak
memory of a run does not change (the memory benchmark measures it); memory freed after a run stays reserved by the
process, up to the trim threshold, for the next run.

A long-lived process (the server) wants the opposite once a large job is over or a large upload was refused: the
memory should go back to the operating system rather than stay reserved for a next run that may not come.
:func:`release_memory` does that with ``malloc_trim(0)``, which returns every free page of every heap. ``medsam3 serve``
also turns the tuning off unless ``MEDSAM3_MALLOC_TUNING=1`` is set: with blocks of up to 32 MB kept in the heap, the
heap fragments and about 13 % of the idle size stayed resident after large jobs even after the trim (bench/RESULTS.md).

Both are process-wide and a no-op outside glibc (macOS, Windows, musl) or when the environment variable
``MEDSAM3_MALLOC_TUNING`` is ``0``.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
from typing import Optional

__all__ = ["reuse_freed_memory", "release_memory"]

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper limit on 64-bit (HEAP_MAX_SIZE / 2)
_TRIM_THRESHOLD = 512 * 1024 * 1024

_applied: Optional[bool] = None


def reuse_freed_memory() -> bool:
    """Tune glibc's allocator once per process (module docstring); returns whether it is in effect."""
    global _applied
    if _applied is None:
        _applied = _apply()
    return _applied


def release_memory() -> bool:
    """Return freed heap memory to the operating system now (glibc ``malloc_trim``); whether it could be done.

    Callers drop their references first (e.g. a finished job's volume); this only hands back what is already free.
    """
    gc.collect()  # arrays held only by reference cycles (e.g. a caught exception's frames) are freed first
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.malloc_trim.restype = ctypes.c_int
    libc.malloc_trim(0)
    return True


def _glibc() -> Optional[ctypes.CDLL]:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def _apply() -> bool:
    libc = _glibc()
    if os.environ.get("MEDSAM3_MALLOC_TUNING", "1") == "0" or libc is None:
        return False
    try:
        mallopt = libc.mallopt
    except AttributeError:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
