"""Run a job (a segmentation through the core's HTTP client, a connection test) in a Python thread and hand its
progress to the GUI through a queue.

Runs only wait on HTTP (the model lives in a server process, local or remote), so a thread is enough and Slicer
never imports torch. Qt objects must only be touched from the GUI thread: the worker never calls back into the
widget, it only puts :class:`JobEvent` objects into a queue that the widget drains from a ``QTimer`` with
:meth:`ThreadJob.poll`.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Optional

from .events import CANCELLED, DONE, ERROR, JobEvent, PROGRESS

__all__ = ["ThreadJob", "Work"]

#: ``work(progress, cancel_token) -> SegmentationResult``; ``progress(stage, fraction)`` may be called from any thread.
Work = Callable[[Callable[[str, float], None], Any], Any]


class ThreadJob:
    """A callable run on a daemon thread with a ``medsam3_core.progress.CancelToken``.

    ``Cancelled`` becomes a ``cancelled`` event, any other ``MedSam3Error`` an ``error`` event with its one-line
    message, and anything else an ``error`` naming the type. The core is imported when a job is created, not when
    this module loads, because Slicer loads the module before the core may be installed.
    """

    def __init__(self, work: Work) -> None:
        from medsam3_core.progress import CancelToken

        self._work = work
        self._token = CancelToken()
        self._queue: "queue.Queue[JobEvent]" = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="MedicalSAM3-job", daemon=True)
        self._finished = False

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() or (self._thread.ident is not None and not self._finished)

    def cancel(self) -> None:
        """Ask the worker to stop at its next cancellation point (the client checks between requests)."""
        self._token.cancel()

    def poll(self) -> list[JobEvent]:
        events = []
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            self._finished = self._finished or event.terminal
            events.append(event)
        return events

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> list[JobEvent]:
        """Block until the job ends; after ``timeout`` seconds it is cancelled and still waited for."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events: list[JobEvent] = []
        while not self._finished:
            events += self.poll()
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                deadline = None
            time.sleep(interval)
        return events

    def _progress(self, stage: str, fraction: float) -> None:
        self._queue.put(JobEvent(PROGRESS, stage=stage, fraction=min(1.0, max(0.0, float(fraction)))))

    def _run(self) -> None:
        try:
            result = self._work(self._progress, self._token)
        except BaseException as err:  # reported to the GUI thread, which shows it; nothing else can catch it here
            self._queue.put(_error_event(err))
            return
        if self._token.cancelled:
            self._queue.put(JobEvent(CANCELLED, message="Cancelled by the user; nothing was changed."))
        else:
            report = result.to_report() if hasattr(result, "to_report") else None
            self._queue.put(JobEvent(DONE, report=report, result=result))


def _error_event(err: BaseException) -> JobEvent:
    from medsam3_core.errors import Cancelled, MedSam3Error

    if isinstance(err, Cancelled):
        return JobEvent(CANCELLED, message=str(err) or "Cancelled by the user; nothing was changed.")
    if isinstance(err, MedSam3Error):
        return JobEvent(ERROR, message=str(err))
    return JobEvent(ERROR, message=f"Unexpected {type(err).__name__}: {err}")
