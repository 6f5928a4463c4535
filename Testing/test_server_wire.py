"""The wire format: round trips are exact, and hostile or malformed uploads are refused with one clear line."""

import dataclasses
import io
import json
import zipfile

import numpy as np
import pytest

from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume
from medsam3_core.segmenter import ObjectInfo, SegmentationResult, SegmentInfo, SegmentOptions
from medsam3_core.server import wire


def _volume(dtype=np.int16) -> Volume:
    rng = np.random.default_rng(1)
    direction = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    return Volume(
        rng.integers(-1000, 1000, size=(5, 6, 7)).astype(dtype),
        spacing=(0.7, 0.8, 2.5),
        origin=(-10.0, 20.5, 3.0),
        direction=direction,
        modality="CT",
        metadata={"window": (40.0, 400.0), "series_uid": "1.2.3", "source": "/home/me/scan.dcm", "x": np.zeros(3)},
    )


def _decode(volume_npz: bytes, header: dict, max_voxels: int = 10**6) -> wire.JobRequest:
    return wire.decode_request(json.dumps(header), volume_npz, max_voxels=max_voxels)


def test_volume_round_trip_keeps_voxels_geometry_prompts_and_options():
    volume = _volume()
    options = SegmentOptions(threshold=0.3, window=(40.0, 400.0), mode="detect", batch_size=2, confidence_map=True)
    data, header = wire.encode_volume(volume, ["left kidney", "liver"], options, concepts=["kidney", "liver"])
    job = _decode(data, header)
    assert job.volume.array.dtype == np.int16 and np.array_equal(job.volume.array, volume.array)
    assert job.volume.same_geometry(volume, atol=0) and job.volume.modality == "CT"
    # only what inference reads travels (the DICOM window for auto windowing); no paths or UIDs leave the client
    assert job.volume.metadata == {"window": [40.0, 400.0]}
    assert job.prompts == ["left kidney", "liver"] and job.concepts == ["kidney", "liver"]
    assert job.options == options


def test_no_threshold_travels_as_none_and_means_the_servers_model_default():
    data, header = wire.encode_volume(_volume(), ["liver"], SegmentOptions())
    assert "threshold" not in header["options"]  # servers of every version read that as their default
    assert _decode(data, header).options.threshold is None
    header["options"]["threshold"] = None
    assert _decode(data, header).options.threshold is None


def test_big_endian_and_rgb_uploads_become_native_arrays():
    rgb = Volume(np.arange(1 * 4 * 5 * 3, dtype=">u2").reshape(1, 4, 5, 3))
    data, header = wire.encode_volume(rgb, ["x"], SegmentOptions())
    job = _decode(data, header)
    assert job.volume.array.dtype == np.dtype("uint16") and job.volume.array.dtype.isnative
    assert np.array_equal(job.volume.array, rgb.array) and job.volume.array.flags.writeable


def test_option_type_table_covers_every_segment_option():
    assert set(wire._OPTION_TYPES) == {f.name for f in dataclasses.fields(SegmentOptions)}


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda h: h["geometry"].update(spacing=[1, 1, 0]), "spacing must be positive"),
        (lambda h: h["geometry"].update(spacing=[1, 1]), "list of 3 finite numbers"),
        (lambda h: h["geometry"].update(direction=[[1, 0, 0], [1, 0, 0], [0, 0, 1]]), "linearly independent"),
        (lambda h: h["geometry"].update(origin=[0, 0, "a"]), "origin"),
        (lambda h: h["geometry"].update(path="/etc/passwd"), "geometry ="),
        (lambda h: h.update(prompts=[]), "1 to 64"),
        (lambda h: h.update(prompts=["ok", "  "]), "non-empty"),
        (lambda h: h.update(prompts=["x" * 201]), "at most 200"),
        (lambda h: h.update(concepts=["a", "b"]), "one entry per prompt"),
        (lambda h: h["options"].update(batch_size="4"), "'batch_size' has the wrong type"),
        (lambda h: h["options"].update(cleanup=1), "'cleanup' has the wrong type"),
        (lambda h: h["options"].update(threshold=True), "'threshold' has the wrong type"),
        (lambda h: h["options"].update(threshold=2.0), "between 0 and 1"),
        (lambda h: h["options"].update(mode="fast"), "mode must be one of"),
        (lambda h: h["options"].update(window=[1, 2, 3]), "centre, width"),
        (lambda h: h["options"].update(batch_size=1000), "limited to 64"),
        (lambda h: h["options"].update(output="/tmp/x"), "Unknown option"),
        (lambda h: h.update(modality={"a": 1}), "modality"),
        (lambda h: h.update(metadata={"window": {"nested": 1}}), "metadata may only hold"),
        (lambda h: h.update(metadata={"source": "/etc/passwd"}), "metadata may only hold"),
        (lambda h: h.update(wire_version=99), "protocol versions"),
    ],
)
def test_invalid_headers_are_refused_with_the_reason(mutate, message):
    data, header = wire.encode_volume(_volume(), ["liver"], SegmentOptions())
    mutate(header)
    with pytest.raises(InputError, match=message):
        _decode(data, header)


def test_non_json_and_non_finite_headers_are_refused():
    data, header = wire.encode_volume(_volume(), ["liver"], SegmentOptions())
    with pytest.raises(InputError, match="not valid JSON"):
        wire.decode_request("{nope", data, max_voxels=10**6)
    text = json.dumps(header).replace("0.7", "NaN", 1)
    with pytest.raises(InputError, match="not valid JSON"):
        wire.decode_request(text, data, max_voxels=10**6)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"not a zip at all", "not a valid .npz"),
        (_npz(arr=np.zeros((2, 2, 2))), "must contain the arrays"),
        (_npz(array=np.zeros((2, 2, 2)), extra=np.zeros(1)), "must contain the arrays"),
        (_npz(array=np.zeros((2, 2, 2), dtype=np.complex64)), "only numeric dtypes"),
        (_npz(array=np.array(["a", "b"])), "only numeric dtypes"),
        (_npz(array=np.zeros((4, 4))), "must be \\(K, J, I\\)"),
        (_npz(array=np.zeros((2, 4, 4, 3))), "must be \\(K, J, I\\)"),
        (_npz(array=np.zeros((0, 4, 4))), "must be \\(K, J, I\\)"),
        (_npz(array=np.full((2, 2, 2), np.nan, dtype=np.float32)), "NaN"),
        (_npz(array=np.zeros((20, 20, 20), dtype=np.uint8)), "more than this server accepts"),
    ],
)
def test_invalid_volume_archives_are_refused(payload, message):
    _, header = wire.encode_volume(_volume(), ["liver"], SegmentOptions())
    with pytest.raises(InputError, match=message):
        _decode(payload, header, max_voxels=4000)


def test_object_arrays_are_never_unpickled():
    buf = io.BytesIO()
    np.savez(buf, array=np.array([{"evil": 1}, None], dtype=object))
    _, header = wire.encode_volume(_volume(), ["liver"], SegmentOptions())
    with pytest.raises(InputError, match="only numeric dtypes"):
        _decode(buf.getvalue(), header)


def test_zip_bomb_is_refused_before_inflating():
    # 64 MB of zeros compress to ~64 kB; the header check refuses it without allocating the array
    bomb = _npz(array=np.zeros((64, 1024, 1024), dtype=np.uint8))
    assert len(bomb) < 200_000
    _, header = wire.encode_volume(_volume(), ["liver"], SegmentOptions())
    with pytest.raises(InputError, match="more than this server accepts"):
        _decode(bomb, header, max_voxels=10**6)


def test_lying_zip_member_size_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:  # a valid 2×2×2 header followed by far more data than it declares
        npy = io.BytesIO()
        np.lib.format.write_array(npy, np.zeros((2, 2, 2), dtype=np.uint8))
        archive.writestr("array.npy", npy.getvalue() + b"\0" * 10_000)
    _, header = wire.encode_volume(_volume(), ["liver"], SegmentOptions())
    with pytest.raises(InputError, match="declares more data"):
        _decode(buf.getvalue(), header)


def test_result_round_trip_restores_report_and_geometry():
    volume = _volume()
    labels = (volume.array > 0).astype(np.uint8)
    result = SegmentationResult(
        labelmap=volume.with_array(labels),
        segments=[
            SegmentInfo(
                "liver",
                "liver",
                1,
                int(labels.sum()),
                1.5,
                0.9,
                (0, 4),
                [ObjectInfo(3, 1, 0.9, int(labels.sum()), (0, 4), {0: 0.8, 4: 0.95})],
            ),
            SegmentInfo("tumour", "tumor", 2, 0, 0.0, 0.0, None, []),
        ],
        confidence=volume.with_array(np.linspace(0, 1, labels.size, dtype=np.float32).reshape(labels.shape)),
        timings={"detect": 1.25},
        options=SegmentOptions(mode="detect", threshold=0.35),
        model="tiny",
        warnings=["w"],
        threshold_source="model",
    )
    back = wire.decode_result(wire.encode_result(result), volume)
    assert np.array_equal(back.labelmap.array, labels) and back.labelmap.same_geometry(volume, atol=0)
    assert np.array_equal(back.confidence.array, result.confidence.array)
    assert back.segments == result.segments
    assert back.to_report() == result.to_report()


def test_result_on_the_wrong_grid_is_refused():
    volume = _volume()
    other = Volume(np.zeros((2, 2, 2), np.uint8))
    data = wire.encode_result(SegmentationResult(labelmap=other, segments=[]))
    with pytest.raises(InputError, match="does not fit"):
        wire.decode_result(data, volume)
