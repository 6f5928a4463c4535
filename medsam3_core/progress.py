"""Progress reporting and cooperative cancellation shared by the CLI, the server and the Slicer module.

Long work takes an optional ``progress(stage, fraction)`` callback and an optional :class:`CancelToken`.
Workers call :meth:`CancelToken.raise_if_cancelled` between batches, so cancellation takes effect within one batch,
and report ``fraction`` in [0, 1] *within* the named stage (stages: ``"load"``, ``"encode"``, ``"detect"``,
``"track"``, ``"fuse"``, ``"write"``; front-ends show the stage name and the fraction).
"""

from __future__ import annotations

import threading
from typing import Callable, Optional

from medsam3_core.errors import Cancelled

__all__ = ["ProgressCallback", "CancelToken", "report"]

ProgressCallback = Callable[[str, float], None]


class CancelToken:
    """A thread-safe flag; ``cancel()`` from any thread, ``raise_if_cancelled()`` in the worker."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise Cancelled("Cancelled by the user; nothing was written.")


def report(progress: Optional[ProgressCallback], stage: str, fraction: float) -> None:
    """Call ``progress`` if given, clamping ``fraction`` to [0, 1]."""
    if progress is not None:
        progress(stage, min(1.0, max(0.0, float(fraction))))

