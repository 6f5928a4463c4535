"""Remote inference equals local inference voxel for voxel, with the real engine on the tiny random model.

The server wraps ``LocalSegmenter(random_bundle)`` and runs on a free 127.0.0.1 port; the client sends the same
volume, prompts and options. Threshold 0 keeps every detection, so the label maps are far from empty and the
comparison can fail; the volume carries a DICOM window so that metadata-driven windowing is covered too.
"""

import threading

import numpy as np
import pytest

from medsam3_core.errors import Cancelled
from medsam3_core.segmenters.local import LocalSegmenter
from medsam3_core.phantom import make_abdomen_phantom
from medsam3_core.progress import CancelToken
from medsam3_core.segmenter import SegmentOptions
from medsam3_core.server.app import create_app
from medsam3_core.server.client import RemoteSegmenter
from medsam3_core.server.runner import BackgroundServer

KEY = "e2e-test-key-0123456789"
PROMPTS = ["kidney", "liver"]


@pytest.fixture(scope="module")
def served(random_bundle):
    local = LocalSegmenter(random_bundle)
    app = create_app(local, api_key=KEY)
    with BackgroundServer(app) as url:
        yield local, RemoteSegmenter(url, api_key=KEY, poll_interval=0.02), app.state.jobs


def _scan(depth=5):
    volume = make_abdomen_phantom(0, (depth, 36, 44), (2.0, 2.0, 5.0))[0]
    volume.metadata = {"window": (60.0, 300.0), "source": "/not/sent.nii.gz"}
    return volume


@pytest.mark.parametrize("mode", ["detect", "track"])
def test_remote_equals_local_voxel_for_voxel(served, mode):
    local, remote, _ = served
    volume = _scan()
    options = SegmentOptions(mode=mode, threshold=0.0, batch_size=2, confidence_map=True)
    expected = local.segment(volume, PROMPTS, options)
    got = remote.segment(volume, PROMPTS, options)
    assert expected.labelmap.array.any()
    assert got.labelmap.array.dtype == expected.labelmap.array.dtype
    assert np.array_equal(got.labelmap.array, expected.labelmap.array)
    assert got.labelmap.same_geometry(volume, atol=0)
    assert np.array_equal(got.confidence.array, expected.confidence.array)
    assert got.segments == expected.segments
    assert got.warnings == expected.warnings and got.model == expected.model


def test_dicom_window_travels_and_matters(served):
    local, remote, _ = served
    volume = _scan()
    options = SegmentOptions(mode="detect", threshold=0.0)
    plain = volume.with_array(volume.array)
    plain.metadata = {}
    with_window, without_window = remote.segment(volume, PROMPTS, options), remote.segment(plain, PROMPTS, options)
    assert np.array_equal(with_window.labelmap.array, local.segment(volume, PROMPTS, options).labelmap.array)
    assert not np.array_equal(with_window.labelmap.array, without_window.labelmap.array)


def test_cancel_a_real_job_mid_run(served):
    _, remote, jobs = served
    token, outcome, started = CancelToken(), {}, threading.Event()

    def progress(stage, fraction):
        if stage not in ("upload", "queued"):
            started.set()

    def run():
        try:
            remote.segment(_scan(depth=60), PROMPTS, SegmentOptions(mode="detect", batch_size=1), progress, token)
        except Exception as exc:  # noqa: BLE001 - inspected below
            outcome["error"] = exc

    cancelled_before = jobs.stats()["cancelled"]
    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(60)
    token.cancel()
    thread.join(60)
    assert not thread.is_alive() and isinstance(outcome.get("error"), Cancelled)
    assert jobs.stats()["cancelled"] == cancelled_before + 1 and jobs.stats()["running"] == 0


def test_concepts_travel_with_their_prompts(served):
    local, remote, _ = served
    volume, options = _scan(), SegmentOptions(mode="detect", threshold=0.0)
    prompts, concepts = ["left kidney", "hepar"], ["kidney", "liver"]
    got = remote.segment(volume, prompts, options, concepts=concepts)
    expected = local.segment(volume, prompts, options, concepts=concepts)
    assert [(s.prompt, s.concept) for s in got.segments] == list(zip(prompts, concepts, strict=True))
    assert np.array_equal(got.labelmap.array, expected.labelmap.array)
