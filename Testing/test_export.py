"""Result export: every file on the input grid, a complete JSON report, safe mask names, and all-or-nothing writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from builders import oblique_direction

import medsam3_core.io.export as export
from medsam3_core.errors import Cancelled, InputError
from medsam3_core.io.export import safe_names, to_jsonable, write_outputs
from medsam3_core.io.geometry import Volume
from medsam3_core.io.reading import read_volume
from medsam3_core.progress import CancelToken
from medsam3_core.segmenter import ObjectInfo, SegmentationResult, SegmentInfo, SegmentOptions

PROMPTS = ["liver", "left kidney", "a/b\\c", "Liver"]


def _result(labels_count: int = 4, shape=(4, 6, 7)) -> SegmentationResult:
    rng = np.random.default_rng(0)
    grid = Volume(np.zeros(shape, np.int16), (0.8, 0.7, 3.0), (10.0, -5.0, 42.0),
                  oblique_direction(15) @ np.diag([1.0, 1.0, -1.0]), "CT")
    labelmap = grid.with_array(rng.integers(0, labels_count + 1, size=shape).astype(np.int32))
    segments = []
    for label, prompt in enumerate((PROMPTS * 100)[:labels_count], start=1):
        voxels = int((labelmap.array == label).sum())
        segments.append(SegmentInfo(prompt, prompt.lower(), label, voxels, voxels * grid.voxel_volume_ml,
                                    np.float32(0.9), (0, shape[0] - 1),
                                    [ObjectInfo(1, label, 0.9, voxels, (0, shape[0] - 1), {0: np.float32(0.8)})]))
    conf = grid.with_array(rng.random(shape, dtype=np.float32))
    return SegmentationResult(labelmap, segments, conf, {"detect": 1.23456}, SegmentOptions(), "demo", ["careful"])


def test_writes_every_file_on_the_input_grid(tmp_path):
    result = _result()
    out = tmp_path / "new" / "out"
    written = write_outputs(result, out, per_segment=True, confidence=True, extra_report={"input": {"path": "x"}})
    assert set(written) == {"labels", "report", "confidence", *(f"mask:{p}" for p in PROMPTS)}
    assert sorted(p.name for p in out.iterdir()) == ["confidence.nii.gz", "labels.nii.gz", "masks", "report.json"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == sorted(
        ["liver.nii.gz", "left_kidney.nii.gz", "abc.nii.gz", "Liver_2.nii.gz"]
    )

    labels = read_volume(written["labels"])
    assert labels.array.dtype == np.uint8 and labels.same_geometry(result.labelmap, atol=1e-5)
    np.testing.assert_array_equal(labels.array, result.labelmap.array)
    for seg in result.segments:
        mask = read_volume(written[f"mask:{seg.prompt}"])
        assert mask.same_geometry(result.labelmap, atol=1e-5) and mask.array.dtype == np.uint8
        np.testing.assert_array_equal(mask.array, (result.labelmap.array == seg.label).astype(np.uint8))
    conf = read_volume(written["confidence"])
    assert conf.array.dtype == np.float32
    np.testing.assert_array_equal(conf.array, result.confidence.array)

    report = json.loads(written["report"].read_text())
    assert report["input"] == {"path": "x"} and report["model"] == "demo" and report["warnings"] == ["careful"]
    assert [s["prompt"] for s in report["segments"]] == PROMPTS
    assert report["segments"][0]["objects"][0]["slice_scores"] == {"0": pytest.approx(0.8)}
    assert report["outputs"]["mask:a/b\\c"] == "masks/abc.nii.gz" and report["outputs"]["labels"] == "labels.nii.gz"
    assert not list(out.rglob(".*")), "no temporaries left"


@pytest.mark.parametrize("fmt", ["nrrd", "mha", ".nii"])
def test_other_formats(tmp_path, fmt):
    written = write_outputs(_result(), tmp_path, fmt=fmt)
    assert written["labels"].name == f"labels.{fmt.lstrip('.')}"
    assert read_volume(written["labels"]).same_geometry(_result().labelmap, atol=1e-5)


def test_more_than_255_labels_use_uint16(tmp_path):
    result = _result(labels_count=300, shape=(3, 20, 20))
    labels = read_volume(write_outputs(result, tmp_path)["labels"])
    assert labels.array.dtype == np.uint16 and labels.array.max() == 300


def test_png_for_2d_results(tmp_path):
    result = _result(shape=(1, 8, 9))
    written = write_outputs(result, tmp_path, fmt="png", per_segment=True)
    np.testing.assert_array_equal(read_volume(written["labels"]).array, result.labelmap.array)
    with pytest.raises(InputError, match="PNG output holds one slice"):
        write_outputs(_result(), tmp_path / "x", fmt="png")
    with pytest.raises(InputError, match="cannot be stored as PNG"):
        write_outputs(result, tmp_path / "y", fmt="png", confidence=True)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_failure_in_second_write_leaves_nothing(tmp_path, monkeypatch):
    real = export.write_volume
    calls = []

    def flaky(volume, path):
        calls.append(path)
        if len(calls) == 2:
            raise InputError("disk full (simulated)")
        return real(volume, path)

    monkeypatch.setattr(export, "write_volume", flaky)
    out = tmp_path / "fresh"
    with pytest.raises(InputError, match="disk full"):
        write_outputs(_result(), out, per_segment=True, confidence=True)
    assert len(calls) == 2
    assert not out.exists(), "the new output folder is removed again"

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "labels.nii.gz").write_bytes(b"previous run")
    (existing / "notes.txt").write_text("mine")
    calls.clear()
    with pytest.raises(InputError):
        write_outputs(_result(), existing, per_segment=True)
    assert sorted(p.name for p in existing.iterdir()) == ["labels.nii.gz", "notes.txt"]
    assert (existing / "labels.nii.gz").read_bytes() == b"previous run", "old results untouched on failure"


def test_cancel_before_rename_leaves_nothing(tmp_path):
    token = CancelToken()
    fractions = []

    def progress(stage, fraction):
        fractions.append(fraction)
        if len(fractions) == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        write_outputs(_result(), tmp_path / "out", per_segment=True, progress=progress, cancel=token)
    assert not (tmp_path / "out").exists()


def test_progress_and_replace_existing(tmp_path):
    fractions = []
    write_outputs(_result(), tmp_path, progress=lambda stage, f: fractions.append((stage, f)))
    assert fractions[-1] == ("write", 1.0) and all(s == "write" for s, _ in fractions)
    assert fractions == sorted(fractions)
    second = _result(labels_count=2)
    write_outputs(second, tmp_path)
    np.testing.assert_array_equal(read_volume(tmp_path / "labels.nii.gz").array, second.labelmap.array)


def test_user_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is a file"):
        write_outputs(_result(), blocker)
    with pytest.raises(InputError, match="Unknown output format"):
        write_outputs(_result(), tmp_path / "o", fmt="jpg")
    no_conf = _result()
    no_conf.confidence = None
    with pytest.raises(ValueError):
        write_outputs(no_conf, tmp_path / "o", confidence=True)


def test_safe_names():
    assert safe_names(["liver", "Liver", "LIVER"]) == ["liver", "Liver_2", "LIVER_3"]
    assert safe_names(["../../etc/passwd", "  left   kidney ", "", "...", "con", "肝臓"]) == [
        "etcpasswd", "left_kidney", "segment_3", "segment_4", "con_", "肝臓"
    ]
    assert len(safe_names(["x" * 500])[0]) == 80


def test_to_jsonable():
    data = to_jsonable({"a": np.float32(1.5), "b": (1, np.int64(2)), "c": float("nan"), 3: np.arange(2)})
    assert data == {"a": 1.5, "b": [1, 2], "c": None, "3": [0, 1]}
    json.dumps(data, allow_nan=False)
