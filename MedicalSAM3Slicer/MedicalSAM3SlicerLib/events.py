"""Events a background segmentation job reports to the GUI, and the parser of the CLI's JSON-lines protocol.

Local runs (a ``PythonSlicer -m medsam3_core.volume infer --progress json`` child process) and remote runs (an HTTP
client in a thread) both turn into the same stream of :class:`JobEvent` objects, so the widget has one code path
for progress, completion, failure and cancellation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = [
    "JobEvent", "PROGRESS", "DONE", "ERROR", "CANCELLED", "LOG", "IMPORTING", "TERMINAL_KINDS", "parse_event_line",
]

PROGRESS, DONE, ERROR, CANCELLED, LOG = "progress", "done", "error", "cancelled", "log"
#: Sent by the module's logic (not by jobs) while it writes a finished result into the scene.
IMPORTING = "importing"
TERMINAL_KINDS = (DONE, ERROR, CANCELLED)


@dataclass
class JobEvent:
    """One thing that happened in a job.

    Attributes:
        kind: ``progress``, ``done``, ``error``, ``cancelled``, ``log`` (free text from the child) or ``importing``.
        stage: core stage name for ``progress`` (``load``, ``encode``, ``detect``, ``track``, ``fuse``, ``write``).
        fraction: progress within ``stage``, 0..1.
        message: the one-line user message for ``error``/``cancelled``, the text of a ``log`` line.
        output: output folder of a finished CLI run.
        report: ``SegmentationResult.to_report()`` of a finished run.
        result: the in-memory ``SegmentationResult`` of a finished thread job (remote runs).
    """

    kind: str
    stage: str = ""
    fraction: float = 0.0
    message: str = ""
    output: Optional[str] = None
    report: Optional[dict[str, Any]] = None
    result: Any = field(default=None, repr=False)

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS


def parse_event_line(line: str) -> JobEvent:
    """Turn one stdout line of the CLI into an event; anything that is not a protocol object is a ``log`` event.

    The CLI promises JSON objects only, but libraries imported by the child may still print warnings to stdout;
    those must reach the log, not crash the reader.
    """
    text = line.strip()
    try:
        data = json.loads(text)
    except ValueError:
        return JobEvent(LOG, message=text)
    if not isinstance(data, dict) or data.get("event") not in (PROGRESS, DONE, ERROR, CANCELLED):
        return JobEvent(LOG, message=text)
    kind = data["event"]
    if kind == PROGRESS:
        try:
            fraction = min(1.0, max(0.0, float(data.get("fraction", 0.0))))
        except (TypeError, ValueError):
            fraction = 0.0
        return JobEvent(PROGRESS, stage=str(data.get("stage", "")), fraction=fraction)
    if kind == DONE:
        return JobEvent(DONE, output=data.get("output"), report=data.get("report"))
    return JobEvent(kind, message=str(data.get("message", "")))
