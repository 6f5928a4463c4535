"""Volume sessions on the server: upload a volume once, then ask any number of prompts on it.

Why: a client exploring a scan asks "liver", then "spleen", then "left kidney". As separate jobs every question
uploads the whole volume again and the server encodes every slice again, although only the text changed. A session
keeps the uploaded volume and — when the server's segmenter can (:meth:`LocalSegmenter.open_session`) — its
per-slice features, so a new prompt costs only the text, the detector heads and the tracker.

Endpoints (added to the app by :func:`add_session_routes`; same key, limits and error format as the job endpoints):

========  ================================  ==========================================================================
POST      ``/v1/sessions``                  multipart, exactly like ``POST /v1/jobs``: opens a session on the volume
                                            and queues the request's prompts as its first job → 202
                                            ``{session_id, job_id, state, …}`` (``session_id`` null when the volume
                                            alone exceeds the session memory cap)
POST      ``/v1/sessions/{id}/jobs``        JSON ``{prompts, concepts?, options?}`` → 202 job status; the job runs on
                                            the session's volume (status and result as any job: ``/v1/jobs/{job}``)
DELETE    ``/v1/sessions/{id}``             close the session and free its memory
========  ================================  ==========================================================================

Limits: a session expires ``session_ttl_s`` after its last use; at most ``max_sessions`` are open and together they
hold at most ``max_session_mb`` (voxels plus kept features); opening one more closes the least recently used. An
unknown or expired session answers 404, and the client then uploads the volume again. Sessions are closed on the job
worker's thread (before its next job, or when the server stops), so closing never races with a running segmentation.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Optional

from fastapi import Depends, FastAPI, HTTPException, Request

from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume
from medsam3_core.segmenter import Segmenter
from medsam3_core.server import wire
from medsam3_core.server.jobs import JobQueue, QueueFull

__all__ = ["SessionJobQueue", "SessionSegmenter", "VolumeSessions", "add_session_routes"]


@dataclass
class _Session:
    id: str
    volume: Volume
    kept: Any  # the segmenter's own session (LocalSession), or None when it has none
    last_used: float

    @property
    def nbytes(self) -> int:
        return int(self.volume.array.nbytes) + int(getattr(self.kept, "nbytes", 0))


class VolumeSessions:
    """The open sessions, with expiry and a memory cap (module docstring).

    Args:
        segmenter: the server's segmenter; its ``open_session(volume)`` is used when it has one.
        ttl_s: seconds a session lives after its last use.
        max_sessions: sessions open at once.
        max_bytes: voxels plus kept features of all sessions together.
        clock: monotonic time source (tests pass a fake one).
    """

    def __init__(self, segmenter: Segmenter, *, ttl_s: float = 1800.0, max_sessions: int = 4,
                 max_bytes: int = 16 * 2**30, clock: Callable[[], float] = time.monotonic) -> None:
        if max_sessions < 1:
            raise ValueError("max_sessions must be at least 1")
        self.segmenter, self.ttl_s, self.max_sessions, self.max_bytes = segmenter, ttl_s, max_sessions, max_bytes
        self._clock = clock
        self._lock = threading.Lock()
        self._open: dict[str, _Session] = {}
        self._closing: list[_Session] = []

    def open(self, volume: Volume) -> Optional[str]:
        """A new session on ``volume``; older ones are closed as needed to stay within the limits. ``None`` when the
        volume alone exceeds the memory cap (the job then runs as a plain job and the client uploads again)."""
        if volume.array.nbytes > self.max_bytes:
            return None
        opener = getattr(self.segmenter, "open_session", None)
        session = _Session(secrets.token_urlsafe(16), volume, opener(volume) if opener else None, self._clock())
        with self._lock:
            self._expire()
            self._open[session.id] = session
            self._shrink(keep=session.id)
        return session.id

    def volume(self, session_id: str) -> Volume:
        """The session's volume (and the session counts as used); raises ``KeyError`` when unknown or expired."""
        with self._lock:
            self._expire()
            session = self._open[session_id]
            session.last_used = self._clock()
            return session.volume

    def close(self, session_id: str) -> None:
        with self._lock:
            self._closing.append(self._open.pop(session_id))

    def close_all(self) -> None:
        with self._lock:
            self._closing += self._open.values()
            self._open.clear()
        self.release()

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"open": len(self._open), "bytes": sum(s.nbytes for s in self._open.values()),
                    "max_sessions": self.max_sessions, "max_bytes": self.max_bytes, "ttl_s": self.ttl_s}

    def kept_for(self, volume: Volume) -> Any:
        """The segmenter session kept for this very volume object, if it is still open."""
        with self._lock:
            session = next((s for s in self._open.values() if s.volume is volume), None)
            if session is not None:
                session.last_used = self._clock()
            return session.kept if session is not None else None

    def release(self) -> None:
        """Free the memory of closed sessions (called on the job worker's thread, see module docstring)."""
        with self._lock:
            closing, self._closing = self._closing, []
        for session in closing:
            if session.kept is not None:
                session.kept.close()

    # -- internals (lock held) -----------------------------------------------------------------------------------
    def _expire(self) -> None:
        now = self._clock()
        for session_id in [s.id for s in self._open.values() if now - s.last_used > self.ttl_s]:
            self._closing.append(self._open.pop(session_id))

    def _shrink(self, keep: str) -> None:
        while len(self._open) > 1 and (
            len(self._open) > self.max_sessions or sum(s.nbytes for s in self._open.values()) > self.max_bytes
        ):
            oldest = min((s for s in self._open.values() if s.id != keep), key=lambda s: s.last_used)
            self._closing.append(self._open.pop(oldest.id))


class SessionSegmenter:
    """The job queue's segmenter: a job on a session's volume runs in that session, any other as before."""

    def __init__(self, segmenter: Segmenter, sessions: VolumeSessions) -> None:
        self.segmenter, self.sessions = segmenter, sessions

    def segment(self, volume, prompts, options=None, progress=None, cancel=None, concepts=None):
        self.sessions.release()
        kept = self.sessions.kept_for(volume)
        kwargs = {} if concepts is None else {"concepts": concepts}
        if kept is not None:
            return kept.segment(prompts, options, progress, cancel, **kwargs)
        return self.segmenter.segment(volume, prompts, options, progress, cancel, **kwargs)


def _prompt_request(body: bytes, volume: Volume) -> wire.JobRequest:
    """A session job's JSON body ``{prompts, concepts?, options?}``, checked like a job upload's header."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, RecursionError) as exc:
        raise InputError(f"The request body is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise InputError("The request body must be a JSON object with 'prompts'.")
    unknown = sorted(set(data) - {"prompts", "concepts", "options"})
    if unknown:
        raise InputError(f"Unknown field(s) {unknown}; a session job has prompts, concepts and options.")
    prompts = wire._prompts(data.get("prompts"), "prompts")  # the same checks as a job upload
    concepts = data.get("concepts")
    if concepts is not None:
        concepts = wire._prompts(concepts, "concepts")
        if len(concepts) != len(prompts):
            raise InputError("concepts must have one entry per prompt.")
    return wire.JobRequest(volume, prompts, wire._options(data.get("options", {})), concepts)


class SessionJobQueue(JobQueue):
    """The job queue of a server with sessions: its worker runs session jobs in their session
    (:class:`SessionSegmenter`), a job submitted through ``POST /sessions`` opens one, and stopping the queue closes
    every session."""

    def __init__(self, segmenter: Segmenter, sessions: VolumeSessions, **kwargs: Any) -> None:
        super().__init__(SessionSegmenter(segmenter, sessions), **kwargs)
        self.sessions = sessions

    def submit(self, request: wire.JobRequest) -> dict[str, Any]:
        opening = _OPENING.get()
        if opening is None:
            return super().submit(request)
        session_id = self.sessions.open(request.volume)
        try:
            status = super().submit(request)
        except QueueFull:
            if session_id is not None:
                self.sessions.close(session_id)
            raise
        return {"session_id": session_id, **status}

    def close(self, timeout: float = 10.0) -> None:
        super().close(timeout)
        self.sessions.close_all()


#: Set while ``POST /sessions`` runs the app's job upload, so the queue knows to open a session for that job.
_OPENING: ContextVar[Optional[bool]] = ContextVar("medsam3_opening_session", default=None)


def add_session_routes(app: FastAPI, queue: SessionJobQueue, require_key: Callable, submit: Callable,
                       prefix: str) -> None:
    """Add the session endpoints (module docstring). ``submit(request)`` is the app's handler of ``POST /jobs``: a
    session is opened with exactly its upload checks and limits, on the volume of the job it queues."""
    sessions = queue.sessions

    def unknown() -> HTTPException:
        return HTTPException(
            404, f"Unknown or expired session; sessions end {sessions.ttl_s:.0f} s after their last use. Upload again."
        )

    @app.post(f"{prefix}/sessions", status_code=202, dependencies=[Depends(require_key)])
    async def open_session(request: Request) -> Any:
        token = _OPENING.set(True)
        try:
            return await submit(request)
        finally:
            _OPENING.reset(token)

    @app.post(f"{prefix}/sessions/{{session_id}}/jobs", status_code=202, dependencies=[Depends(require_key)])
    async def session_job(session_id: str, request: Request) -> Any:
        try:
            volume = sessions.volume(session_id)
        except KeyError:
            raise unknown() from None
        try:
            job = _prompt_request(await request.body(), volume)
        except InputError as exc:
            raise HTTPException(422, str(exc)) from None
        try:
            return {"session_id": session_id, **queue.submit(job)}
        except QueueFull:
            raise HTTPException(
                503, f"The server is busy ({queue.queue_size} jobs already waiting); try again shortly.",
                {"Retry-After": "5"},
            ) from None

    @app.delete(f"{prefix}/sessions/{{session_id}}", dependencies=[Depends(require_key)])
    def close_session(session_id: str) -> dict[str, Any]:
        try:
            sessions.close(session_id)
        except KeyError:
            raise unknown() from None
        return {"session_id": session_id, "state": "closed"}
