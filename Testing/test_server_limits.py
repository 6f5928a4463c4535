"""The server's limits hold against hostile uploads: sizes are judged from the declared header before anything is
decompressed, decompression is capped at exactly the declared size, every field is checked at submission (422, no
job queued), and memory freed by a job goes back to the operating system."""

from __future__ import annotations

import io
import json
import platform
import tracemalloc
import zipfile

import httpx
import numpy as np
import pytest

from medsam3_core.errors import InputError
from medsam3_core.segmenter import SegmentOptions
from medsam3_core.server import wire
from medsam3_core.server.app import create_app
from medsam3_core.server.runner import BackgroundServer

KEY = "limits-test-key-0123456789"


def _npy_member(shape: tuple[int, ...], dtype: str, payload: bytes) -> bytes:
    """An ``.npy`` file whose header declares ``shape``/``dtype`` and whose data is ``payload`` (truthful or not)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def _zip(member: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("array.npy", member)
    return buf.getvalue()


def _header(**options) -> str:
    _, header = wire.encode_volume(_small_volume(), ["liver"], SegmentOptions())
    header["options"].update(options)
    return json.dumps(header)


def _small_volume():
    from medsam3_core.io.geometry import Volume

    return Volume(np.zeros((2, 8, 8), np.int16))


def test_a_grey_volume_over_the_voxel_limit_is_refused_before_it_is_decompressed():
    """2.5× the limit in grey voxels: under the old RGB allowance of 3×, which let it inflate before refusing it."""
    max_voxels = 10**6
    data = _zip(_npy_member((10, 500, 500), "|u1", bytes(2_500_000)))  # 2.5 MB of zeros, ~2.5 kB compressed
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"2500000 voxels, more than this server accepts \(1000000\)"):
            wire.decode_request(_header(), data, max_voxels=max_voxels)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 500_000, f"{peak} bytes were allocated to refuse it: it was decompressed first"


def test_an_rgb_image_keeps_its_three_values_per_pixel_allowance():
    rgb = np.zeros((1, 40, 40, 3), np.uint8)
    job = wire.decode_request(_header(), _zip(_npy_member(rgb.shape, "|u1", rgb.tobytes())), max_voxels=1600)
    assert job.volume.array.shape == (1, 40, 40, 3)


@pytest.mark.parametrize(
    "payload, message",
    [
        (bytes(999), "declares less data"),  # shorter than the header declares
        (bytes(1001), "declares more data"),  # longer: never read past the declared size
    ],
)
def test_decompression_is_capped_at_exactly_the_declared_size(payload, message):
    with pytest.raises(InputError, match=message):
        wire.decode_request(_header(), _zip(_npy_member((10, 10, 10), "|u1", payload)), max_voxels=10**6)


def test_big_endian_uploads_are_read_in_place_with_the_right_values():
    values = np.arange(2 * 8 * 8, dtype=">i2").reshape(2, 8, 8)
    job = wire.decode_request(_header(), _zip(_npy_member(values.shape, ">i2", values.tobytes())), max_voxels=10**6)
    assert job.volume.array.dtype.isnative and np.array_equal(job.volume.array, values)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"window": "nonsense"}, "Unknown window"),
        ({"window": "40,0"}, "width must be a positive"),
        ({"window": [40, 0]}, "width must be a positive"),
        ({"window": [40, -5]}, "width must be a positive"),
        ({"window": "40,abc"}, "not two numbers"),
        ({"slice_axis": "oblique"}, "slice axis must be one of"),
        ({"memory_size": 0}, "memory size must be at least 1"),
    ],
)
def test_every_option_is_checked_at_submission_with_422_and_nothing_queued(options, message):
    class NeverRuns:
        def segment(self, *args, **kwargs):
            raise AssertionError("an invalid job must not reach the segmenter")

    app = create_app(NeverRuns(), api_key=KEY)
    volume_npz, _ = wire.encode_volume(_small_volume(), ["liver"], SegmentOptions())
    with BackgroundServer(app) as url:
        response = httpx.post(f"{url}/v1/jobs", headers={"Authorization": f"Bearer {KEY}"},
                              files={"volume": ("v.npz", volume_npz)}, data={"request": _header(**options)})
        submitted = app.state.jobs.stats()["submitted"]
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"] and submitted == 0


def test_preset_and_auto_windows_are_still_accepted():
    for window in ("auto", "lung", "40,400", [40, 400]):
        job = wire.decode_request(_header(window=window), wire.encode_volume(_small_volume(), ["x"],
                                  SegmentOptions())[0], max_voxels=10**6)
        assert job.options.window is not None or window == "auto"


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_memory_hands_freed_heap_pages_back():
    """Heap blocks freed below a live one cannot be trimmed from the top; ``release_memory`` returns them anyway."""
    from medsam3_core.engine.allocator import release_memory

    blocks = [bytearray(100_000) for _ in range(600)]  # ~60 MB of heap, below glibc's mmap threshold
    for block in blocks:
        block[::4096] = b"\x01" * len(block[::4096])  # touch every page
    keep = blocks[-1]
    high = _rss_bytes()
    del blocks
    assert release_memory()
    assert _rss_bytes() < high - 40 * 2**20
    assert keep[0] == 1
