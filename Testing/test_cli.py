"""End-to-end CLI runs on real files: the bundled demo phantom, nilearn's MNI152 template, and every bad input.

The CLI is run in-process through ``medsam3_core.cli.infer.main`` (same code path as ``python -m``) except for one
subprocess run that checks the JSON-lines protocol and the exit code the Slicer module relies on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medsam3_core.io.reading import read_volume
from medsam3_core.cli.infer import EXIT_USER_ERROR, main

REPO = Path(__file__).resolve().parents[1]


def _infer(*args: str) -> int:
    return main(["infer", *args, "--device", "cpu", "--progress", "none"])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_out")
    code = _infer("demo", "kidney", "liver", "spleen", "-o", str(out), "--per-segment", "--confidence-map",
                  "--mode", "detect")
    return code, out


def test_demo_writes_labelmap_with_input_geometry(demo_run):
    from medsam3_core.phantom import demo_paths

    code, out = demo_run
    assert code == 0
    ct = read_volume(demo_paths()[0])
    labels = read_volume(out / "labels.nii.gz")
    assert labels.same_geometry(ct)
    assert not np.allclose(ct.direction, np.eye(3)), "the demo scan is meant to exercise a non-identity direction"
    assert set(np.unique(labels.array)) <= {0, 1, 2, 3}
    conf = read_volume(out / "confidence.nii.gz")
    assert conf.same_geometry(ct) and conf.array.dtype == np.float32
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["kidney.nii.gz", "liver.nii.gz", "spleen.nii.gz"]


def test_demo_report_describes_every_prompt(demo_run):
    _, out = demo_run
    report = json.loads((out / "report.json").read_text())
    assert [s["prompt"] for s in report["segments"]] == ["kidney", "liver", "spleen"]
    assert [s["label"] for s in report["segments"]] == [1, 2, 3]
    labels = read_volume(out / "labels.nii.gz").array
    for seg in report["segments"]:
        assert seg["voxels"] == int((labels == seg["label"]).sum())
        assert seg["volume_ml"] == pytest.approx(seg["voxels"] * np.prod(report["input"]["spacing"]) / 1000, rel=1e-4)
    assert report["options"]["mode"] == "detect"
    assert report["timings"]["read"] > 0 and report["timings"]["total"] > 0
    from medsam3_core.model.bundle import load_model

    # no --threshold: the run used the demo model's recommended threshold, and the report says so
    assert report["threshold_source"] == "model"
    assert report["options"]["threshold"] == load_model("demo", device="cpu").score_threshold


def test_real_mni152_scan_end_to_end(tmp_path):
    from builders import mni152_files

    t1, _ = mni152_files(tmp_path)
    out = tmp_path / "out"
    assert _infer(str(t1), "brain", "-o", str(out), "--format", "nrrd", "--mode", "detect") == 0
    labels = read_volume(out / "labels.nrrd")
    assert labels.same_geometry(read_volume(t1))


def test_json_progress_protocol_in_a_subprocess(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "medsam3_core.volume", "infer", "demo", "liver", "-o", str(out), "--device", "cpu",
         "--progress", "json", "--mode", "detect"],
        capture_output=True, text=True, cwd=REPO, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "done" and Path(events[-1]["output"]) == out.resolve()
    fractions = [e["fraction"] for e in events if e["event"] == "progress" and e["stage"] == "detect"]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0


@pytest.mark.parametrize(
    "make_input, extra, message",
    [
        (lambda d: d / "missing.nii.gz", [], "not"),
        (lambda d: _corrupt(d), [], ""),
        (lambda d: _empty_dir(d), [], "DICOM"),
        (lambda d: _four_d(d), [], "--frame"),
        (lambda d: "demo", ["--model", "/nonexistent/model"], "model"),
        (lambda d: "demo", ["--window", "nonsense"], "window"),
        (lambda d: "demo", ["--threshold", "2"], "threshold"),
        (lambda d: "demo", ["--dicom-seg", "x.dcm"], "DICOM"),
    ],
)
def test_bad_inputs_exit_2_with_one_line_and_no_files(tmp_path, capsys, make_input, extra, message):
    out = tmp_path / "out"
    code = _infer(str(make_input(tmp_path)), "kidney", "-o", str(out), *extra)
    err = capsys.readouterr().err.strip()
    assert code == EXIT_USER_ERROR
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    assert message.lower() in err.lower()
    assert not out.exists()


def test_empty_prompt_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    assert _infer("demo", "  ", "-o", str(out)) == EXIT_USER_ERROR
    assert "prompt" in capsys.readouterr().err.lower()
    assert not out.exists()


def test_console_script_lists_commands(capsys):
    from medsam3_core.cli.main import main as medsam3

    with pytest.raises(SystemExit) as exc:
        medsam3(["--help"])
    assert exc.value.code == 0
    assert "infer" in capsys.readouterr().out


def _corrupt(d: Path) -> Path:
    p = d / "corrupt.nii.gz"
    p.write_bytes(b"this is not a NIfTI file")
    return p


def _empty_dir(d: Path) -> Path:
    p = d / "empty_series"
    p.mkdir()
    (p / "notes.txt").write_text("no DICOM here")
    return p


def _four_d(d: Path) -> Path:
    import nibabel as nib

    p = d / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 3), np.float32), np.eye(4)), p)
    return p
