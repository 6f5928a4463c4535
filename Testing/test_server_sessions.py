"""Volume sessions on the server: upload once, prompt many times; the server runs no ViT for a later prompt, the
results equal local ones, sessions expire, stay within their memory cap, and a bad request is a clear error."""

import httpx
import numpy as np
import pytest

from medsam3_core.phantom import make_abdomen_phantom
from medsam3_core.segmenter import SegmentOptions
from medsam3_core.segmenters.local import LocalSegmenter
from medsam3_core.server.app import create_app
from medsam3_core.server.client import RemoteSegmenter
from medsam3_core.server.runner import BackgroundServer
from medsam3_core.server.sessions import VolumeSessions

KEY = "session-test-key-0123456789"
OPTIONS = SegmentOptions(threshold=0.0, batch_size=2)


class CountingLocal(LocalSegmenter):
    """The real local segmenter, counting the ViT passes of its engine."""

    def __init__(self, bundle):
        super().__init__(bundle)
        self.encoder_batches = 0
        original = self.engine.detector.encode_images

        def counting(pixels):
            self.encoder_batches += 1
            return original(pixels)

        self.engine.detector.encode_images = counting


@pytest.fixture(scope="module")
def served(random_bundle):
    local = CountingLocal(random_bundle)
    app = create_app(local, api_key=KEY)
    with BackgroundServer(app) as url:
        yield local, RemoteSegmenter(url, api_key=KEY, poll_interval=0.02), url


def _scan(depth=4, seed=0):
    return make_abdomen_phantom(seed, (depth, 30, 36), (2.0, 2.0, 5.0))[0]


def test_second_prompt_sends_no_volume_runs_no_vit_and_equals_local(served, random_bundle):
    local, remote, _ = served
    volume = _scan()
    with remote.open_session(volume) as session:
        first = session.segment(["kidney"], OPTIONS)
        assert session.session_id is not None
        before = local.encoder_batches
        second = session.segment(["liver", "spleen"], OPTIONS)
        assert local.encoder_batches == before  # the server answered from the kept features
    expected = LocalSegmenter(random_bundle).segment(volume, ["liver", "spleen"], OPTIONS)
    assert expected.labelmap.array.any()
    np.testing.assert_array_equal(second.labelmap.array, expected.labelmap.array)
    assert second.labelmap.same_geometry(volume, atol=0)
    assert [s.prompt for s in second.segments] == ["liver", "spleen"] and first.segments[0].prompt == "kidney"


def test_a_closed_or_expired_session_is_opened_again_transparently(served):
    _, remote, url = served
    volume = _scan(seed=1)
    session = remote.open_session(volume)
    session.segment(["kidney"], OPTIONS)
    old = session.session_id
    with httpx.Client(base_url=url + "/v1", headers={"Authorization": f"Bearer {KEY}"}) as http:
        assert http.delete(f"/sessions/{old}").json()["state"] == "closed"
        gone = http.post(f"/sessions/{old}/jobs", json={"prompts": ["liver"]})
        assert gone.status_code == 404 and "Upload again" in gone.json()["detail"]
    again = session.segment(["liver"], OPTIONS)
    assert session.session_id not in (None, old) and again.labelmap.same_geometry(volume, atol=0)
    session.close()


@pytest.mark.parametrize(
    "body, message",
    [
        ({"prompts": []}, "list of 1 to"),
        ({"prompts": ["liver"], "options": {"batch_size": "big"}}, "wrong type"),
        ({"prompts": ["liver"], "volume": 1}, "Unknown field"),
        ({"prompts": ["a", "b"], "concepts": ["a"]}, "one entry per prompt"),
    ],
)
def test_bad_session_job_is_a_clear_422(served, body, message):
    _, remote, url = served
    session = remote.open_session(_scan(seed=2))
    session.segment(["kidney"], SegmentOptions(threshold=0.0, mode="detect"))
    with httpx.Client(base_url=url + "/v1", headers={"Authorization": f"Bearer {KEY}"}) as http:
        answer = http.post(f"/sessions/{session.session_id}/jobs", json=body)
        assert answer.status_code == 422 and message in answer.json()["detail"]
        assert http.post(f"/sessions/{session.session_id}/jobs", content=b"{").status_code == 422
        assert http.post("/sessions/nope/jobs", json={"prompts": ["x"]}).status_code == 404
        assert http.post(f"/sessions/{session.session_id}/jobs", json={"prompts": ["x"]},
                         headers={"Authorization": "Bearer wrong"}).status_code == 401
    session.close()


class Kept:
    def __init__(self, nbytes):
        self.nbytes, self.closed = nbytes, False

    def close(self):
        self.closed = True


class Opener:
    def __init__(self, nbytes=0):
        self.nbytes, self.kept = nbytes, []

    def open_session(self, volume):
        self.kept.append(Kept(self.nbytes))
        return self.kept[-1]


def test_sessions_expire_after_their_last_use_and_are_freed_by_the_worker():
    now = [0.0]
    opener = Opener()
    sessions = VolumeSessions(opener, ttl_s=10.0, clock=lambda: now[0])
    a = sessions.open(_scan())
    now[0] = 8.0
    sessions.volume(a)  # used: lives until 18
    now[0] = 17.0
    assert sessions.volume(a) is not None
    now[0] = 28.0
    with pytest.raises(KeyError):
        sessions.volume(a)
    assert not opener.kept[0].closed  # closing happens on the worker's thread …
    sessions.release()
    assert opener.kept[0].closed  # … which frees the memory


def test_memory_cap_closes_the_least_recently_used_and_too_large_volumes_get_none():
    now = [0.0]
    volume = _scan()
    opener = Opener(nbytes=1000)
    per_session = volume.array.nbytes + 1000
    sessions = VolumeSessions(opener, max_sessions=5, max_bytes=2 * per_session, clock=lambda: now[0])
    a = sessions.open(volume)
    now[0] = 1.0
    b = sessions.open(volume)
    now[0] = 2.0
    sessions.volume(a)  # a is now more recent than b
    c = sessions.open(volume)
    assert sessions.stats()["open"] == 2
    with pytest.raises(KeyError):
        sessions.volume(b)
    assert sessions.volume(a) is volume and sessions.volume(c) is volume
    assert VolumeSessions(opener, max_bytes=10).open(volume) is None
    count = VolumeSessions(Opener(), max_sessions=1)
    first = count.open(volume)
    count.open(volume)
    with pytest.raises(KeyError):
        count.volume(first)
    with pytest.raises(ValueError):
        VolumeSessions(opener, max_sessions=0)
