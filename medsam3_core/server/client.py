"""``RemoteSegmenter``: the HTTP client of ``medsam3 serve`` behind the same interface as local inference.

It implements :class:`~medsam3_core.segmenter.Segmenter`, so the CLI (``--server URL``), the Slicer module and the
tests swap local for remote inference without other changes: the volume travels as compressed ``.npz`` plus JSON,
the server's stages are relayed to the ``progress`` callback (``upload`` → ``queued`` → the engine's stages →
``download``), a :class:`~medsam3_core.progress.CancelToken` cancels the job on the server too, and the label map
comes back on exactly the grid that was sent.

Every failure is a one-line :class:`~medsam3_core.errors.MedSam3Error`: :class:`RemoteError` for connection
refused, a wrong key, a timeout, a busy or failed server; :class:`InputError` when the server refuses the upload
(413/422) with the server's own explanation; errors raised by the server's engine (e.g. ``PromptError``) keep their
type. Only ``httpx`` is needed, not FastAPI, so the Slicer module can use it without the server extra.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any, Optional, Sequence

import httpx

from medsam3_core.errors import (
    Cancelled,
    CheckpointError,
    DeviceError,
    InputError,
    MedSam3Error,
    ModelError,
    PromptError,
    RemoteError,
)
from medsam3_core.io.geometry import Volume
from medsam3_core.progress import CancelToken, ProgressCallback, report
from medsam3_core.segmenter import SegmentationResult, SegmentOptions
from medsam3_core.server.wire import decode_result, encode_prompt_request, encode_volume

__all__ = ["RemoteSegmenter", "RemoteSession"]

_API = "/v1"
# Engine errors re-raised on the client with their own type, so the CLI treats them exactly like local ones.
_ERROR_TYPES: dict[str, type[MedSam3Error]] = {
    cls.__name__: cls for cls in (InputError, PromptError, ModelError, CheckpointError, DeviceError, RemoteError)
}
_CANCEL_WAIT_S = 10.0


class _UploadReader(io.BytesIO):
    """The upload body, reporting ``upload`` progress per chunk and aborting the transfer when cancelled."""

    def __init__(self, data: bytes, progress: Optional[ProgressCallback], cancel: CancelToken) -> None:
        super().__init__(data)
        self._total, self._progress, self._cancel = max(1, len(data)), progress, cancel

    def read(self, size: Optional[int] = -1) -> bytes:
        self._cancel.raise_if_cancelled()
        chunk = super().read(size)
        report(self._progress, "upload", self.tell() / self._total)
        return chunk


class RemoteSegmenter:
    """Segment on a remote ``medsam3 serve``.

    Args:
        url: the server, e.g. ``http://gpu-host:8000`` (``https://`` behind a TLS proxy or with ``--ssl-certfile``).
        api_key: the key the server was started with (``None`` only for a ``--no-auth`` server on this machine).
        timeout: seconds any single network operation may take (connect, send a chunk, wait for an answer); the
            whole job may take longer, it is polled.
        poll_interval: seconds between status requests while the job runs.
    """

    def __init__(self, url: str, api_key: Optional[str] = None, timeout: float = 30.0, poll_interval: float = 0.2):
        url = url.strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise InputError(f"The server URL must start with http:// or https://, got {url!r}.")
        self.url, self.api_key, self.timeout, self.poll_interval = url, api_key, float(timeout), float(poll_interval)
        self._info: Optional[dict[str, Any]] = None

    # -- public API ------------------------------------------------------------------------------------------------
    def check_connection(self) -> dict[str, Any]:
        """The server's ``/v1/info`` (version, model, device, limits, queue); raises :class:`RemoteError` if unusable.

        Checks the API key too, so a Slicer "Test connection" button or the CLI catches a wrong key up front.
        """
        with self._session() as http:
            self._info = self._json(http, "GET", "/info")
        return self._info

    def segment(
        self,
        volume: Volume,
        prompts: Sequence[str],
        options: Optional[SegmentOptions] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        concepts: Optional[Sequence[str]] = None,
    ) -> SegmentationResult:
        """Run one job on the server; same contract as the local segmenter (``concepts``: model-facing prompts)."""
        options = options or SegmentOptions()
        cancel = cancel or CancelToken()
        cancel.raise_if_cancelled()
        with self._session() as http:
            status = self._upload(http, "/jobs", volume, prompts, options, progress, cancel, concepts)
            return self._finish_job(http, status, volume, progress, cancel)

    def open_session(self, volume: Volume) -> "RemoteSession":
        """A volume session on the server: the volume is uploaded by the first call and kept there for the next ones
        (the server keeps its features too, so a new prompt runs no ViT; ``medsam3_core.server.sessions``)."""
        return RemoteSession(self, volume)

    # -- job life cycle --------------------------------------------------------------------------------------------
    def _upload(self, http: httpx.Client, path: str, volume: Volume, prompts, options: SegmentOptions,
                progress: Optional[ProgressCallback], cancel: CancelToken, concepts) -> dict[str, Any]:
        """Send the volume and the request (``POST /jobs`` or ``/sessions``); the server's job status."""
        volume_npz, header = encode_volume(volume, prompts, options, concepts)
        self._check_upload_size(http, len(volume_npz))
        return self._json(
            http,
            "POST",
            path,
            files={"volume": ("volume.npz", _UploadReader(volume_npz, progress, cancel), "application/octet-stream")},
            data={"request": json.dumps(header)},
        )

    def _finish_job(self, http: httpx.Client, status: dict[str, Any], volume: Volume,
                    progress: Optional[ProgressCallback], cancel: CancelToken) -> SegmentationResult:
        """Wait for a queued job, download and decode its result on the caller's ``volume``."""
        job_id = status.get("job_id")
        if not isinstance(job_id, str):
            raise RemoteError(f"{self.url} did not answer like a Medical SAM3 server (no job id); check the URL.")
        try:
            status = self._wait(http, job_id, status, progress, cancel)
            report(progress, "download", 0.0)
            data = self._call(http, "GET", f"/jobs/{job_id}/result").content
        except BaseException:  # cancelled, Ctrl+C or a failure: do not leave the job running on the server
            self._discard(http, job_id)
            raise
        try:
            result = decode_result(data, volume)
        except InputError as exc:
            raise RemoteError(f"The server at {self.url} sent an unreadable result: {exc}") from None
        report(progress, "download", 1.0)
        return result

    def _wait(
        self,
        http: httpx.Client,
        job_id: str,
        status: dict[str, Any],
        progress: Optional[ProgressCallback],
        cancel: CancelToken,
    ) -> dict[str, Any]:
        while status["state"] in ("queued", "running"):
            cancel.raise_if_cancelled()
            if status["state"] == "queued":
                report(progress, "queued", 0.0)
            elif status["stage"] not in ("starting", "cancelling"):
                report(progress, status["stage"], status["fraction"])
            time.sleep(self.poll_interval)
            status = self._json(http, "GET", f"/jobs/{job_id}")
        if status["state"] == "failed":
            error = status.get("error") or {}
            raise _ERROR_TYPES.get(error.get("type", ""), RemoteError)(
                error.get("message") or f"The job failed on the server at {self.url}."
            )
        if status["state"] == "cancelled":
            raise Cancelled("The job was cancelled on the server; nothing was written.")
        return status

    def _discard(self, http: httpx.Client, job_id: str) -> None:
        """Best-effort cancel: ask the server to stop, wait briefly for it so its GPU is free for the next job."""
        deadline = time.monotonic() + _CANCEL_WAIT_S
        try:
            status = self._json(http, "DELETE", f"/jobs/{job_id}")
            while status["state"] == "running" and time.monotonic() < deadline:
                time.sleep(self.poll_interval)
                status = self._json(http, "GET", f"/jobs/{job_id}")
        except MedSam3Error:
            pass  # the server is gone or forgot the job: nothing left to cancel

    def _check_upload_size(self, http: httpx.Client, nbytes: int) -> None:
        """Refuse an upload the server would reject with 413, before sending hundreds of megabytes."""
        if self._info is None:
            self._info = self._json(http, "GET", "/info")
        limit_mb = float(self._info.get("limits", {}).get("max_upload_mb", float("inf")))
        if nbytes > limit_mb * 2**20 * 0.999:
            raise InputError(
                f"The compressed volume is {nbytes / 2**20:.0f} MB, more than the server at {self.url} accepts "
                f"({limit_mb:.0f} MB); crop or downsample it, or raise --max-upload-mb on the server."
            )

    # -- HTTP ------------------------------------------------------------------------------------------------------
    def _session(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url + _API, headers=headers, timeout=self.timeout, follow_redirects=False)

    def _json(self, http: httpx.Client, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = self._call(http, method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise RemoteError(f"{self.url} did not answer like a Medical SAM3 server (no JSON); check the URL.")
        return body

    def _call(self, http: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            raise RemoteError(
                f"Cannot connect to the server at {self.url} ({_reason(exc)}); "
                "check the URL and that `medsam3 serve` is running there."
            ) from None
        except httpx.TimeoutException:
            raise RemoteError(
                f"The server at {self.url} did not answer within {self.timeout:g} s; "
                "it may be overloaded or unreachable (raise the timeout for slow links)."
            ) from None
        except httpx.HTTPError as exc:
            raise RemoteError(f"Lost the connection to the server at {self.url} ({_reason(exc)}).") from None
        if response.status_code < 400:
            return response
        detail = _detail(response)
        if response.status_code == 401:
            hint = "use the key it was started with" if self.api_key else "it requires an API key"
            raise RemoteError(f"The server at {self.url} refused the API key ({hint}: --api-key or MEDSAM3_API_KEY).")
        if response.status_code in (413, 422):
            raise InputError(f"The server refused the upload: {detail}")
        if response.status_code == 503:
            raise RemoteError(f"The server at {self.url} is busy: {detail}")
        if response.status_code == 404 and path.startswith("/jobs/"):
            raise RemoteError(f"The server lost the job: {detail}")
        raise RemoteError(f"The server at {self.url} answered HTTP {response.status_code}: {detail}")


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail) if detail else (response.text.strip()[:200] or response.reason_phrase)


def _reason(exc: Exception) -> str:
    text = str(exc)
    return "connection refused" if "refused" in text.lower() or not text else text


class RemoteSession:
    """A volume kept on the server between prompts (:meth:`RemoteSegmenter.open_session`).

    :meth:`segment` has the contract of :meth:`RemoteSegmenter.segment` without the volume. The first call uploads
    the volume; later calls send only the prompts. A session the server has expired or closed is opened again by
    uploading once more, so a call never fails because the session ended. :meth:`close` frees it on the server.
    """

    def __init__(self, client: RemoteSegmenter, volume: Volume) -> None:
        self.client, self.volume = client, volume
        self.session_id: Optional[str] = None

    def segment(
        self,
        prompts: Sequence[str],
        options: Optional[SegmentOptions] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        concepts: Optional[Sequence[str]] = None,
    ) -> SegmentationResult:
        options = options or SegmentOptions()
        cancel = cancel or CancelToken()
        cancel.raise_if_cancelled()
        client = self.client
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        with client._session() as http:
            status = None
            if self.session_id is not None:
                body = encode_prompt_request(prompts, options, concepts)
                try:
                    status = client._json(http, "POST", f"/sessions/{self.session_id}/jobs", json=body)
                except RemoteError as exc:
                    if "Unknown or expired session" not in str(exc):
                        raise
                    self.session_id = None  # expired on the server: upload again below
            if status is None:
                status = client._upload(http, "/sessions", self.volume, prompts, options, progress, cancel, concepts)
                self.session_id = status.get("session_id")
            return client._finish_job(http, status, self.volume, progress, cancel)

    def close(self) -> None:
        """Close the session on the server (best effort: an unreachable server forgets it when it expires)."""
        if self.session_id is None:
            return
        with self.client._session() as http:
            try:
                self.client._json(http, "DELETE", f"/sessions/{self.session_id}")
            except MedSam3Error:
                pass
        self.session_id = None

    def __enter__(self) -> "RemoteSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
