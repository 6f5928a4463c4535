"""The HTTP API of ``medsam3 serve``: a FastAPI app over one warm segmenter and a bounded job queue.

Endpoints (all JSON unless noted; every endpoint except ``/v1/health`` needs ``Authorization: Bearer <key>``):

========  ===========================  ===============================================================================
GET       ``/v1/health``               liveness: ``{"status": "ok", "version": …}`` (no key, no model details)
GET       ``/v1/info``                 version, wire protocol, model/device, server limits, queue counters
POST      ``/v1/jobs``                 multipart: ``volume`` (``.npz`` file) + ``request`` (JSON header) → 202 status
GET       ``/v1/jobs/{id}``            ``{state, stage, fraction, position, error, …}``
GET       ``/v1/jobs/{id}/result``     ``.npz`` bytes (label map, confidence, report); the job is deleted afterwards
DELETE    ``/v1/jobs/{id}``            cancel a queued/running job, or discard a finished one
POST …    ``/v1/sessions…``            volume sessions: upload once, prompt many times (:mod:`.sessions`)
========  ===========================  ===============================================================================

Failures answer ``{"detail": "<one line for the user>"}`` with 401 (missing/wrong key), 404 (unknown or expired
job), 409 (result not ready), 413 (body over ``max_upload_mb``), 422 (malformed or invalid upload) or 503 (queue
full, with ``Retry-After``). Security choices and their reasons: the key is compared in constant time
(``hmac.compare_digest``) so response timing does not leak it; the body limit is enforced while the body streams
in, before any parsing; uploads are never unpickled and no client string is ever used as a file-system path; job
ids are random 128-bit tokens, so one client cannot guess another's result.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from typing import Any, AsyncIterator, Optional

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from medsam3_core import __version__
from medsam3_core.engine.allocator import release_memory
from medsam3_core.errors import InputError
from medsam3_core.segmenter import Segmenter
from medsam3_core.server.jobs import NotFinished, QueueFull, UnknownJob
from medsam3_core.server.sessions import SessionJobQueue, VolumeSessions, add_session_routes
from medsam3_core.server.wire import MAX_PROMPTS, WIRE_VERSION, decode_request

__all__ = ["create_app", "DEFAULT_MAX_VOXELS", "API_PREFIX"]

API_PREFIX = "/v1"
DEFAULT_MAX_VOXELS = 2**29  # 2048 slices of 512²: a whole-body CT series fits, a runaway upload does not
_MAX_HEADER_BYTES = 1024 * 1024
_log = logging.getLogger("medsam3.server")


class _BodyTooLarge(Exception):
    pass


class _BodyLimit:
    """ASGI middleware answering 413 as soon as a request body exceeds ``max_bytes``.

    A declared ``Content-Length`` over the limit is refused before a byte is read; a chunked body is counted as it
    arrives, so an endless upload cannot fill memory or the temporary directory.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        received, started = 0, False

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge()
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        mb = self.max_bytes / 2**20
        response = JSONResponse(
            {"detail": f"The upload is larger than this server accepts ({mb:g} MB); crop or downsample the volume."},
            status_code=413,
            headers={"Connection": "close"},
        )
        await response({"type": "http"}, None, send)


def create_app(
    segmenter: Segmenter,
    *,
    api_key: Optional[str],
    max_upload_mb: float = 1024.0,
    queue_size: int = 4,
    result_ttl_s: float = 600.0,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    model_info: Optional[dict[str, Any]] = None,
    session_ttl_s: float = 1800.0,
    max_sessions: int = 4,
    max_session_mb: float = 16384.0,
) -> FastAPI:
    """Build the API around ``segmenter`` (kept warm for the app's lifetime).

    Args:
        segmenter: what runs the jobs, e.g. ``LocalSegmenter(load_model(path))``.
        api_key: the shared secret clients must send; ``None`` disables authentication (the ``serve`` command only
            allows that on a loopback address).
        max_upload_mb: limit on a request body (compressed volume plus header).
        queue_size: jobs that may wait behind the running one; more get 503.
        result_ttl_s: seconds a finished job's result waits for its download.
        max_voxels: limit on the uncompressed volume (protects memory against zip bombs and huge grids).
        model_info: facts shown by ``/v1/info`` (model source, device, dtype …).
        session_ttl_s, max_sessions, max_session_mb: limits of volume sessions (:mod:`~medsam3_core.server.sessions`).
    """
    sessions = VolumeSessions(segmenter, ttl_s=session_ttl_s, max_sessions=max_sessions,
                              max_bytes=int(max_session_mb * 2**20))
    queue = SessionJobQueue(segmenter, sessions, queue_size=queue_size, result_ttl_s=result_ttl_s)
    key_bytes = api_key.encode("utf-8") if api_key else None

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        queue.start()
        try:
            yield
        finally:
            await run_in_threadpool(queue.close)

    def require_key(request: Request) -> None:
        if key_bytes is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8"), key_bytes):
            raise HTTPException(
                401,
                "Missing or wrong API key; send the server's key as 'Authorization: Bearer <key>'.",
                headers={"WWW-Authenticate": "Bearer"},
            )

    app = FastAPI(
        title="Medical SAM3 inference server",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,  # no interactive pages: the API is for the medsam3 client, and less surface is safer
        redoc_url=None,
        openapi_url=None,
    )
    app.state.jobs = queue
    app.add_middleware(_BodyLimit, max_bytes=int(max_upload_mb * 2**20))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"Malformed request: {where}: {first.get('msg', 'invalid')}"}, status_code=422)

    def unknown_job() -> HTTPException:
        return HTTPException(
            404,
            f"Unknown or expired job; results are deleted after download or {result_ttl_s:.0f} s after the job ends.",
        )

    @app.get(f"{API_PREFIX}/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__}

    @app.get(f"{API_PREFIX}/info", dependencies=[Depends(require_key)])
    def info() -> dict[str, Any]:
        return {
            "version": __version__,
            "wire_version": WIRE_VERSION,
            "model": dict(model_info or {}),
            "auth": key_bytes is not None,
            "limits": {"max_upload_mb": max_upload_mb, "max_voxels": max_voxels, "max_prompts": MAX_PROMPTS},
            "queue": queue.stats(),
        }

    @app.post(f"{API_PREFIX}/jobs", status_code=202, dependencies=[Depends(require_key)])
    async def submit(request: Request) -> Any:
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise HTTPException(422, "Send the job as multipart/form-data with a 'volume' file and a 'request' field.")
        try:
            form = await request.form(max_files=1, max_fields=1, max_part_size=_MAX_HEADER_BYTES)
        except StarletteHTTPException as exc:  # Starlette reports multipart syntax errors and limits as 400
            raise HTTPException(422, f"Malformed multipart upload: {exc.detail}") from None
        except ClientDisconnect:  # the client cancelled during its upload: nothing to answer, nothing to log
            return Response(status_code=400)
        try:
            volume, header = form.get("volume"), form.get("request")
            if not isinstance(volume, UploadFile) or not isinstance(header, str):
                raise HTTPException(422, "The upload needs a 'volume' file part (.npz) and a 'request' JSON field.")
            # decoded from the spooled upload file itself: no in-memory copy of the compressed body
            job = await run_in_threadpool(decode_request, header, volume.file, max_voxels=max_voxels)
        except InputError as exc:
            await run_in_threadpool(release_memory)  # whatever the refused upload made the process allocate
            raise HTTPException(422, str(exc)) from None
        finally:
            await form.close()
        try:
            status = queue.submit(job)
        except QueueFull:
            raise HTTPException(
                503, f"The server is busy ({queue_size} jobs already waiting); try again shortly.", {"Retry-After": "5"}
            ) from None
        _log.info("job %s queued: shape %s, %d prompt(s)", status["job_id"], job.volume.shape, len(job.prompts))
        return status

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}", dependencies=[Depends(require_key)])
    def job_status(job_id: str) -> dict[str, Any]:
        try:
            return queue.status(job_id)
        except UnknownJob:
            raise unknown_job() from None

    @app.get(f"{API_PREFIX}/jobs/{{job_id}}/result", dependencies=[Depends(require_key)])
    def job_result(job_id: str) -> Response:
        try:
            data = queue.take_result(job_id)
        except UnknownJob:
            raise unknown_job() from None
        except NotFinished as exc:
            raise HTTPException(409, f"The job is {exc.args[0]}; poll its status until it is done.") from None
        return Response(data, media_type="application/octet-stream", headers={"Cache-Control": "no-store"})

    @app.delete(f"{API_PREFIX}/jobs/{{job_id}}", dependencies=[Depends(require_key)])
    def job_cancel(job_id: str) -> dict[str, Any]:
        try:
            return queue.cancel(job_id)
        except UnknownJob:
            raise unknown_job() from None

    add_session_routes(app, queue, require_key, submit, API_PREFIX)  # upload once, prompt many times (sessions.py)
    return app
