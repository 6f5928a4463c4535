"""Server + client over real HTTP on 127.0.0.1, with a deterministic fake segmenter standing in for the GPU model.

Covers authentication, request limits, validation, progress, cancel, queueing, busy, OOM retry, expiry, failure
reporting and a bounded load test. Every server runs in a background thread on a free loopback port and stops at
the end of its ``with`` block; every wait is bounded.
"""

import contextlib
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from medsam3_core.errors import Cancelled, DeviceError, InputError, PromptError, RemoteError
from medsam3_core.io.geometry import Volume
from medsam3_core.progress import CancelToken, report
from medsam3_core.segmenter import ObjectInfo, SegmentationResult, SegmentInfo, SegmentOptions
from medsam3_core.server import wire
from medsam3_core.server.app import create_app
from medsam3_core.server.client import RemoteSegmenter
from medsam3_core.server.jobs import DONE, JobQueue, NotFinished, UnknownJob
from medsam3_core.server.runner import BackgroundServer

KEY = "test-key-0123456789abcdef"


class FakeSegmenter:
    """Label k where ``|voxel| % (P + 1) == k``; sleeps ``delay`` per slice, checking cancel like the real engine."""

    def __init__(self, delay=0.0, oom_above_batch=None, error=None):
        self.delay, self.oom_above_batch, self.error = delay, oom_above_batch, error
        self.batch_sizes, self.completed = [], 0
        self.active = self.max_active = 0
        self._lock = threading.Lock()

    def segment(self, volume, prompts, options=None, progress=None, cancel=None):
        options = options or SegmentOptions()
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.batch_sizes.append(options.batch_size)
        try:
            if self.error is not None:
                raise self.error
            if self.oom_above_batch is not None and options.batch_size > self.oom_above_batch:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            depth = volume.shape[0]
            for k in range(depth):
                if cancel is not None:
                    cancel.raise_if_cancelled()
                time.sleep(self.delay)
                report(progress, "detect", (k + 1) / depth)
            result = expected_result(volume, prompts, options)
            with self._lock:
                self.completed += 1
            return result
        finally:
            with self._lock:
                self.active -= 1


def expected_result(volume, prompts, options):
    labels = (np.abs(volume.array.astype(np.int64)) % (len(prompts) + 1)).astype(np.uint8)
    segments = [
        SegmentInfo(
            p,
            p.lower(),
            n,
            int((labels == n).sum()),
            0.5,
            0.75,
            (0, volume.shape[0] - 1),
            [ObjectInfo(n, n, 0.75, int((labels == n).sum()), (0, volume.shape[0] - 1), {0: 0.7})],
        )
        for n, p in enumerate(prompts, 1)
    ]
    confidence = volume.with_array(labels.astype(np.float32) / len(prompts)) if options.confidence_map else None
    return SegmentationResult(volume.with_array(labels), segments, confidence, {"detect": 0.01}, options, "fake")


def phantom(depth=6, seed=0):
    rng = np.random.default_rng(seed)
    return Volume(
        rng.integers(-50, 50, size=(depth, 12, 10)).astype(np.int16),
        spacing=(0.9, 0.8, 3.0),
        origin=(5.0, -7.0, 11.0),
        direction=np.array([[1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]]),
        modality="CT",
    )


@contextlib.contextmanager
def running(segmenter, **kwargs):
    kwargs.setdefault("api_key", KEY)
    app = create_app(segmenter, **kwargs)
    with BackgroundServer(app) as url:
        yield url, app.state.jobs


def client(url, key=KEY, **kwargs):
    kwargs.setdefault("poll_interval", 0.02)
    kwargs.setdefault("timeout", 10.0)
    return RemoteSegmenter(url, api_key=key, **kwargs)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# -- end to end ----------------------------------------------------------------------------------------------------
def test_remote_result_equals_local_result_with_progress():
    fake = FakeSegmenter()
    volume = phantom()
    options = SegmentOptions(mode="detect", confidence_map=True, threshold=0.4)
    events = []
    with running(fake) as (url, _):
        result = client(url).segment(volume, ["Kidney", "liver"], options, progress=lambda s, f: events.append((s, f)))
    local = expected_result(volume, ["Kidney", "liver"], options)
    assert np.array_equal(result.labelmap.array, local.labelmap.array)
    assert result.labelmap.same_geometry(volume, atol=0)
    assert np.array_equal(result.confidence.array, local.confidence.array)
    assert result.to_report() == local.to_report()
    stages = [s for s, _ in events]
    assert stages[0] == "upload" and stages[-1] == "download" and ("download", 1.0) in events
    assert all(0.0 <= f <= 1.0 for _, f in events)


def test_info_health_and_check_connection():
    with running(FakeSegmenter(), model_info={"source": "fake", "device": "cpu"}, max_upload_mb=3) as (url, _):
        assert httpx.get(f"{url}/v1/health").json()["status"] == "ok"  # health needs no key
        info = client(url).check_connection()
    assert info["model"] == {"source": "fake", "device": "cpu"} and info["auth"] is True
    assert info["limits"]["max_upload_mb"] == 3 and info["queue"]["queue_size"] == 4
    assert "docs" not in str(info)


# -- security ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": KEY}])
def test_missing_or_wrong_key_is_401_on_every_endpoint(headers):
    with running(FakeSegmenter()) as (url, _):
        for method, path in [
            ("GET", "/v1/info"),
            ("POST", "/v1/jobs"),
            ("GET", "/v1/jobs/x"),
            ("GET", "/v1/jobs/x/result"),
            ("DELETE", "/v1/jobs/x"),
        ]:
            response = httpx.request(method, url + path, headers=headers)
            assert response.status_code == 401, (method, path)
            assert response.headers["www-authenticate"] == "Bearer"


def test_client_with_wrong_or_missing_key_gets_a_clear_error():
    with running(FakeSegmenter()) as (url, _):
        with pytest.raises(RemoteError, match="refused the API key \\(use the key it was started with"):
            client(url, key="not-the-key-0123456789").segment(phantom(), ["liver"])
        with pytest.raises(RemoteError, match="it requires an API key"):
            client(url, key=None).check_connection()


def test_no_auth_server_accepts_requests_without_key():
    with running(FakeSegmenter(), api_key=None) as (url, _):
        result = client(url, key=None).segment(phantom(), ["liver"])
    assert result.labelmap.shape == phantom().shape


def test_oversized_upload_is_413_declared_or_streamed():
    limit_mb = 0.05
    with running(FakeSegmenter(), max_upload_mb=limit_mb) as (url, _):
        headers = {"Authorization": f"Bearer {KEY}"}
        body = b"x" * 200_000
        declared = httpx.post(f"{url}/v1/jobs", content=body, headers=headers)
        assert declared.status_code == 413 and "larger than this server accepts" in declared.json()["detail"]

        def chunks():  # no Content-Length: the limit is enforced while the body streams in
            yield b'--b\r\nContent-Disposition: form-data; name="volume"; filename="v.npz"\r\n\r\n'
            for _ in range(50):
                yield b"y" * 10_000

        streamed = httpx.post(
            f"{url}/v1/jobs", content=chunks(), headers={**headers, "Content-Type": "multipart/form-data; boundary=b"}
        )
        assert streamed.status_code == 413
        # the client checks the server's limit before sending and says what to do
        big = Volume(np.random.default_rng(0).integers(0, 2**15, size=(8, 64, 64)).astype(np.int16))
        with pytest.raises(InputError, match="more than the server .* accepts"):
            client(url).segment(big, ["liver"])


def _post_job(url, files=None, data=None, content=None, headers=None):
    return httpx.post(
        f"{url}/v1/jobs",
        files=files,
        data=data,
        content=content,
        headers={"Authorization": f"Bearer {KEY}", **(headers or {})},
    )


def test_malformed_payloads_are_422_with_a_reason():
    volume_npz, header = wire.encode_volume(phantom(), ["liver"], SegmentOptions())
    with running(FakeSegmenter()) as (url, jobs):
        cases = {
            "json body": _post_job(url, content=b'{"a": 1}', headers={"Content-Type": "application/json"}),
            "missing volume": _post_job(url, data={"request": json.dumps(header)}),
            "missing header": _post_job(url, files={"volume": ("v.npz", volume_npz)}),
            "bad json": _post_job(url, files={"volume": ("v.npz", volume_npz)}, data={"request": "{"}),
            "bad npz": _post_job(
                url, files={"volume": ("v.npz", b"PK\x03\x04junk")}, data={"request": json.dumps(header)}
            ),
            "broken multipart": _post_job(
                url, content=b"--b\r\nnonsense", headers={"Content-Type": "multipart/form-data; boundary=b"}
            ),
            "two files": _post_job(
                url,
                files=[("volume", ("a", volume_npz)), ("volume", ("b", volume_npz))],
                data={"request": json.dumps(header)},
            ),
        }
        assert jobs.stats()["submitted"] == 0
    for name, response in cases.items():
        assert response.status_code == 422, (name, response.status_code, response.text)
        assert isinstance(response.json()["detail"], str) and response.json()["detail"], name


def test_client_reports_server_validation_as_input_error():
    with running(FakeSegmenter()) as (url, _):
        with pytest.raises(InputError, match="The server refused the upload: Each entry of prompts must be non-empty"):
            client(url).segment(phantom(), ["liver", " "])


# -- job life cycle ------------------------------------------------------------------------------------------------
def test_cancel_mid_job_stops_the_server_job_and_frees_the_queue():
    fake = FakeSegmenter(delay=0.05)
    token, started, outcome = CancelToken(), threading.Event(), {}

    def progress(stage, fraction):
        if stage == "detect":
            started.set()

    def run():
        try:
            outcome["result"] = client(url).segment(phantom(depth=200), ["liver"], progress=progress, cancel=token)
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            outcome["error"] = exc

    with running(fake) as (url, jobs):
        thread = threading.Thread(target=run)
        thread.start()
        assert started.wait(10)
        t0 = time.monotonic()
        token.cancel()
        thread.join(10)
        assert not thread.is_alive()
        assert isinstance(outcome.get("error"), Cancelled)
        wait_for(lambda: jobs.stats()["cancelled"] == 1 and jobs.stats()["running"] == 0)
        stopped_after = time.monotonic() - t0
        assert fake.completed == 0
        # the worker is free again: the next job runs to the end
        fake.delay = 0.0
        assert client(url).segment(phantom(), ["liver"]).labelmap.shape == phantom().shape
    assert stopped_after < 3.0


def test_cancel_during_upload_aborts_it_and_queues_nothing(caplog):
    token = CancelToken()
    volume = Volume(np.random.default_rng(0).integers(0, 30000, size=(20, 128, 128)).astype(np.int16))

    def progress(stage, fraction):
        if stage == "upload" and fraction > 0.1:
            token.cancel()

    with running(FakeSegmenter()) as (url, jobs):
        with pytest.raises(Cancelled):
            client(url).segment(volume, ["liver"], progress=progress, cancel=token)
        assert jobs.stats()["submitted"] == 0
    assert "Traceback" not in caplog.text and "Exception in ASGI" not in caplog.text


def test_cancel_by_http_and_second_download_is_404():
    fake = FakeSegmenter()
    volume_npz, header = wire.encode_volume(phantom(), ["liver"], SegmentOptions())
    auth = {"Authorization": f"Bearer {KEY}"}
    with running(fake) as (url, _):
        job = _post_job(url, files={"volume": ("v.npz", volume_npz)}, data={"request": json.dumps(header)}).json()
        wait_for(lambda: httpx.get(f"{url}/v1/jobs/{job['job_id']}", headers=auth).json()["state"] == DONE)
        first = httpx.get(f"{url}/v1/jobs/{job['job_id']}/result", headers=auth)
        second = httpx.get(f"{url}/v1/jobs/{job['job_id']}/result", headers=auth)
        gone = httpx.get(f"{url}/v1/jobs/{job['job_id']}", headers=auth)
    assert first.status_code == 200 and first.headers["cache-control"] == "no-store"
    assert wire.decode_result(first.content, phantom()).labelmap.shape == phantom().shape
    assert second.status_code == 404 and "expired" in second.json()["detail"]
    assert gone.status_code == 404


def test_two_concurrent_clients_are_served_in_turn_with_nothing_lost():
    fake = FakeSegmenter(delay=0.02)
    volumes = [phantom(seed=1), phantom(seed=2)]
    results, errors = {}, []

    def run(n):
        try:
            results[n] = client(url).segment(volumes[n], ["a", "b", "c"])
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    with running(fake) as (url, jobs):
        threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        stats = jobs.stats()
    assert not errors and fake.max_active == 1 and stats["done"] == 2
    for n, volume in enumerate(volumes):
        expected = expected_result(volume, ["a", "b", "c"], SegmentOptions()).labelmap.array
        assert np.array_equal(results[n].labelmap.array, expected)


def test_full_queue_answers_busy():
    fake = FakeSegmenter(delay=0.05)
    threads = []

    def background(volume):
        thread = threading.Thread(target=lambda: client(url).segment(volume, ["x"]), daemon=True)
        thread.start()
        threads.append(thread)

    with running(fake, queue_size=1) as (url, jobs):
        background(phantom(depth=40))
        wait_for(lambda: jobs.stats()["running"] == 1)
        background(phantom(depth=1))
        wait_for(lambda: jobs.stats()["queued"] == 1)
        with pytest.raises(RemoteError, match="is busy: The server is busy \\(1 jobs already waiting\\)"):
            client(url).segment(phantom(), ["liver"])
        for t in threads:
            t.join(30)
        assert jobs.stats()["done"] == 2


def test_cuda_oom_is_retried_with_smaller_batches_then_reported():
    volume = phantom()
    with running(FakeSegmenter(oom_above_batch=1)) as (url, _):
        result = client(url).segment(volume, ["liver"], SegmentOptions(batch_size=8))
    assert result.options.batch_size == 1
    assert result.warnings == [
        "GPU out of memory at batch size 8; retried with 4.",
        "GPU out of memory at batch size 4; retried with 2.",
        "GPU out of memory at batch size 2; retried with 1.",
    ]
    always = FakeSegmenter(oom_above_batch=0)
    with running(always) as (url, _):
        with pytest.raises(DeviceError, match="ran out of memory even with batch size 1"):
            client(url).segment(volume, ["liver"], SegmentOptions(batch_size=3))
    assert always.batch_sizes == [3, 1]


def test_engine_errors_keep_their_type_and_bugs_become_remote_errors():
    with running(FakeSegmenter(error=PromptError("Prompt 'xyz' is unknown; try 'kidney'."))) as (url, _):
        with pytest.raises(PromptError, match="^Prompt 'xyz' is unknown; try 'kidney'.$"):
            client(url).segment(phantom(), ["xyz"])
    with running(FakeSegmenter(error=ZeroDivisionError("boom"))) as (url, jobs):
        with pytest.raises(RemoteError, match="server failed while segmenting \\(ZeroDivisionError: boom\\)"):
            client(url).segment(phantom(), ["x"])
        # the server survives a crashing job
        assert client(url).check_connection()["queue"]["failed"] == 1


def test_connection_refused_and_timeout_are_clear_remote_errors():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(RemoteError, match=f"Cannot connect to the server at http://127.0.0.1:{port} .*medsam3 serve"):
        client(f"http://127.0.0.1:{port}").check_connection()

    silent = socket.socket()  # accepts connections, never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(RemoteError, match="did not answer within 0.3 s"):
            client(url, timeout=0.3).segment(phantom(), ["liver"])
        assert time.monotonic() - t0 < 5
    finally:
        silent.close()
    with pytest.raises(InputError, match="must start with http"):
        RemoteSegmenter("gpu-host:8000")


def test_non_medsam3_server_is_reported():
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    other = FastAPI()
    other.get("/v1/info")(lambda: PlainTextResponse("hello"))
    with BackgroundServer(other) as url:
        with pytest.raises(RemoteError, match="did not answer like a Medical SAM3 server"):
            client(url).check_connection()


# -- queue internals -----------------------------------------------------------------------------------------------
def test_finished_results_expire_after_the_ttl_and_unfinished_results_are_409():
    now = [0.0]
    fake = FakeSegmenter()
    queue = JobQueue(fake, queue_size=2, result_ttl_s=60, clock=lambda: now[0]).start()
    try:
        volume_npz, header = wire.encode_volume(phantom(), ["liver"], SegmentOptions())
        request = wire.decode_request(json.dumps(header), volume_npz, max_voxels=10**6)
        job_id = queue.submit(request)["job_id"]
        wait_for(lambda: queue.status(job_id)["state"] == DONE)
        now[0] = 59.0
        assert queue.status(job_id)["state"] == DONE
        now[0] = 61.0
        with pytest.raises(UnknownJob):
            queue.status(job_id)
        fake.delay = 0.05
        slow = queue.submit(request)["job_id"]
        with pytest.raises(NotFinished):
            queue.take_result(slow)
        assert queue.cancel(slow)["job_id"] == slow
    finally:
        queue.close()
    assert queue.stats()["running"] == 0


# -- load ----------------------------------------------------------------------------------------------------------
def test_bounded_load_50_jobs_4_clients_zero_errors(capsys):
    fake = FakeSegmenter()
    n_jobs, n_clients = 50, 4
    errors, done = [], []
    lock = threading.Lock()

    def worker(offset):
        remote = client(url)
        for n in range(offset, n_jobs, n_clients):
            volume = phantom(depth=4, seed=n)
            try:
                result = remote.segment(volume, ["a", "b"])
                ok = np.array_equal(
                    result.labelmap.array, expected_result(volume, ["a", "b"], SegmentOptions()).labelmap.array
                )
            except Exception as exc:  # noqa: BLE001
                ok = exc
            with lock:
                (done if ok is True else errors).append(ok)

    with running(fake, queue_size=n_clients) as (url, jobs):
        t0 = time.monotonic()
        threads = [threading.Thread(target=worker, args=(c,)) for c in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - t0
        stats = jobs.stats()
    with capsys.disabled():
        print(
            f"\n[load] {n_jobs} jobs, {n_clients} clients: {n_jobs / elapsed:.1f} jobs/s, "
            f"{elapsed:.2f} s, errors {len(errors)}"
        )
    assert errors == [] and len(done) == n_jobs
    assert stats["done"] == n_jobs and stats["failed"] == 0 and fake.max_active == 1
