"""The server's job queue: one worker thread runs one segmentation at a time on the warm model.

Why one at a time: a GPU holds one full-size SAM3 run comfortably, two contend for memory and both slow down, so
jobs wait in a bounded FIFO (a full queue is refused at once, the client tells its user the server is busy) rather
than piling up. Each job carries a :class:`~medsam3_core.progress.CancelToken`; cancelling a queued job removes it,
cancelling the running one stops it within one batch. When CUDA runs out of memory the job is retried with half
the batch size, down to 1, before it fails with a message that says so.

After every job the worker hands the memory it freed back to the operating system, so a server that has run a large
job returns to its idle size (``bench/server_soak.py`` measures it).

Results stay in memory (encoded ``.npz`` bytes) until the client downloads them — the download deletes them — or
until ``result_ttl_s`` after the job finished, whichever comes first; nothing is written to disk.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from medsam3_core.engine.allocator import release_memory
from medsam3_core.errors import Cancelled, DeviceError, MedSam3Error
from medsam3_core.progress import CancelToken
from medsam3_core.segmenter import Segmenter, SegmentOptions
from medsam3_core.server.wire import JobRequest, encode_result

__all__ = [
    "Job",
    "JobQueue",
    "QueueFull",
    "UnknownJob",
    "NotFinished",
    "QUEUED",
    "RUNNING",
    "DONE",
    "FAILED",
    "CANCELLED",
]

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
_FINISHED = (DONE, FAILED, CANCELLED)
_log = logging.getLogger("medsam3.server")


class QueueFull(Exception):
    """The bounded queue has no room; the HTTP layer answers 503 with Retry-After."""


class UnknownJob(KeyError):
    """No such job: never submitted, already downloaded, or expired."""


class NotFinished(Exception):
    """The result of a job that is still queued or running was requested."""


@dataclass
class Job:
    """One submitted segmentation and everything a status request reports about it."""

    id: str
    request: Optional[JobRequest]
    created: float
    state: str = QUEUED
    stage: str = QUEUED
    fraction: float = 0.0
    error: Optional[dict[str, str]] = None
    result: Optional[bytes] = None
    finished: Optional[float] = None
    cancel: CancelToken = field(default_factory=CancelToken)


class JobQueue:
    """Bounded FIFO of :class:`Job` s served by one worker thread calling ``segmenter.segment``.

    Args:
        segmenter: the warm model (anything implementing :class:`~medsam3_core.segmenter.Segmenter`).
        queue_size: jobs allowed to *wait* besides the running one; more are refused with :class:`QueueFull`.
        result_ttl_s: seconds a finished job (result or error) is kept for its client.
        clock: monotonic time source (tests pass a fake one to exercise expiry).
    """

    def __init__(
        self,
        segmenter: Segmenter,
        *,
        queue_size: int = 4,
        result_ttl_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.segmenter = segmenter
        self.queue_size = queue_size
        self.result_ttl_s = result_ttl_s
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._waiting: collections.deque[Job] = collections.deque()
        self._running: Optional[Job] = None
        self._cond = threading.Condition()
        self._stopping = False
        self._counts = collections.Counter()
        self._worker = threading.Thread(target=self._work, name="medsam3-job-worker", daemon=True)

    # -- life cycle ------------------------------------------------------------------------------------------------
    def start(self) -> "JobQueue":
        self._worker.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Cancel the running job, drop the waiting ones and stop the worker."""
        with self._cond:
            self._stopping = True
            if self._running is not None:
                self._running.cancel.cancel()
            self._cond.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout)

    # -- requests from the HTTP layer ------------------------------------------------------------------------------
    def submit(self, request: JobRequest) -> dict[str, Any]:
        """Queue a validated job and return its status; raises :class:`QueueFull` when there is no room."""
        with self._cond:
            self._expire()
            if len(self._waiting) >= self.queue_size or self._stopping:
                raise QueueFull()
            job = Job(id=secrets.token_urlsafe(16), request=request, created=self._clock())
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._counts["submitted"] += 1
            self._cond.notify_all()
            return self._status(job)

    def status(self, job_id: str) -> dict[str, Any]:
        with self._cond:
            self._expire()
            return self._status(self._get(job_id))

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; a finished job is discarded (its result is no longer wanted)."""
        with self._cond:
            job = self._get(job_id)
            if job.state == QUEUED:
                self._waiting.remove(job)
                self._finish(job, CANCELLED)
            elif job.state == RUNNING:
                job.cancel.cancel()
                job.stage = "cancelling"
            else:
                del self._jobs[job_id]
            return self._status(job)

    def take_result(self, job_id: str) -> bytes:
        """The encoded result of a finished job; the job is forgotten once its result has been handed out."""
        with self._cond:
            job = self._get(job_id)
            if job.state != DONE or job.result is None:
                raise NotFinished(job.state)
            del self._jobs[job_id]
            return job.result

    def stats(self) -> dict[str, Any]:
        with self._cond:
            return {
                "queued": len(self._waiting),
                "running": int(self._running is not None),
                "queue_size": self.queue_size,
                "result_ttl_s": self.result_ttl_s,
                **{k: self._counts[k] for k in ("submitted", DONE, FAILED, CANCELLED)},
            }

    # -- internals -------------------------------------------------------------------------------------------------
    def _get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(job_id)
        return job

    def _status(self, job: Job) -> dict[str, Any]:
        position = next((n for n, j in enumerate(self._waiting, 1) if j is job), 0)
        return {
            "job_id": job.id,
            "state": job.state,
            "stage": job.stage,
            "fraction": round(job.fraction, 4),
            "position": position,
            "error": job.error,
            "elapsed_s": round((self._clock() if job.finished is None else job.finished) - job.created, 3),
        }

    def _finish(
        self, job: Job, state: str, error: Optional[dict[str, str]] = None, result: Optional[bytes] = None
    ) -> None:
        """End ``job`` in one step, so status, counters and the worker's slot never disagree."""
        with self._cond:
            job.state, job.stage, job.error, job.result, job.finished = state, state, error, result, self._clock()
            job.request = None  # drop the uploaded volume as soon as it is no longer needed
            if state == DONE:
                job.fraction = 1.0
            if self._running is job:
                self._running = None
            self._counts[state] += 1

    def _expire(self) -> None:
        now = self._clock()
        for job_id in [
            j.id for j in self._jobs.values() if j.finished is not None and now - j.finished > self.result_ttl_s
        ]:
            del self._jobs[job_id]

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait(timeout=min(5.0, self.result_ttl_s))
                    self._expire()
                if self._stopping:
                    while self._waiting:
                        self._finish(self._waiting.popleft(), CANCELLED)
                    return
                job = self._waiting.popleft()
                job.state, job.stage = RUNNING, "starting"
                self._running = job
            self._execute(job)
            del job  # the volume and every intermediate are unreferenced now: give their memory back to the OS
            release_memory()

    def _execute(self, job: Job) -> None:
        request = job.request
        assert request is not None
        started = self._clock()
        try:
            result_bytes = self._segment_with_oom_retry(job, request)
        except Cancelled:
            _log.info("job %s cancelled", job.id)
            self._finish(job, CANCELLED)
            return
        except MedSam3Error as exc:
            _log.info("job %s failed: %s", job.id, exc)
            self._finish(job, FAILED, {"type": type(exc).__name__, "message": str(exc)})
            return
        except Exception as exc:  # a bug or an unexpected library failure: keep the server alive, log the traceback
            _log.exception("job %s crashed", job.id)
            message = f"The server failed while segmenting ({type(exc).__name__}: {exc}); see the server log."
            self._finish(job, FAILED, {"type": "RemoteError", "message": message})
            return
        if job.cancel.cancelled:  # cancelled after the last batch: the client no longer wants the result
            self._finish(job, CANCELLED)
            return
        self._finish(job, DONE, result=result_bytes)
        _log.info("job %s done in %.2f s (%d bytes)", job.id, self._clock() - started, len(result_bytes))

    def _segment_with_oom_retry(self, job: Job, request: JobRequest) -> bytes:
        def progress(stage: str, fraction: float) -> None:
            if not job.cancel.cancelled:
                job.stage, job.fraction = stage, fraction

        options: SegmentOptions = request.options
        notes: list[str] = []
        while True:
            job.cancel.raise_if_cancelled()
            kwargs: dict[str, Any] = {} if request.concepts is None else {"concepts": request.concepts}
            try:
                result = self.segmenter.segment(
                    request.volume, request.prompts, options, progress, job.cancel, **kwargs
                )
                break
            except torch.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                if options.batch_size <= 1:
                    raise DeviceError(
                        "The server's GPU ran out of memory even with batch size 1; this volume is too large for it. "
                        "Crop or downsample the volume, or use a server with more GPU memory."
                    ) from None
                smaller = max(1, options.batch_size // 2)
                notes.append(f"GPU out of memory at batch size {options.batch_size}; retried with {smaller}.")
                _log.warning("job %s: %s", job.id, notes[-1])
                options = dataclasses.replace(options, batch_size=smaller)
        result.warnings.extend(notes)
        return encode_result(result)
