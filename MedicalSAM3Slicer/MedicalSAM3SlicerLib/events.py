"""Events a background job reports to the GUI: progress, then exactly one terminal event (done, error, cancelled).

Every run (local child server or remote server, both through the core's HTTP client in a thread) and every
"Test connection" turns into this stream, so the widget has one code path for progress, completion, failure and
cancellation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "JobEvent", "PROGRESS", "DONE", "ERROR", "CANCELLED", "IMPORTING", "TERMINAL_KINDS",
]

PROGRESS, DONE, ERROR, CANCELLED = "progress", "done", "error", "cancelled"
#: Sent by the module's logic (not by jobs) while it writes a finished result into the scene.
IMPORTING = "importing"
TERMINAL_KINDS = (DONE, ERROR, CANCELLED)


@dataclass
class JobEvent:
    """One thing that happened in a job.

    Attributes:
        kind: ``progress``, ``done``, ``error``, ``cancelled`` or ``importing``.
        stage: stage name for ``progress`` (``server`` while the local server starts, ``upload``, ``queued``, the
            engine's ``encode``/``detect``/``track``/``fuse``, ``download``).
        fraction: progress within ``stage``, 0..1.
        message: the one-line user message for ``done``/``error``/``cancelled``.
        report: ``SegmentationResult.to_report()`` of a finished run.
        result: what the job returned (a ``SegmentationResult``, or the server's info for "Test connection").
    """

    kind: str
    stage: str = ""
    fraction: float = 0.0
    message: str = ""
    report: Optional[dict[str, Any]] = None
    result: Any = field(default=None, repr=False)

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS
