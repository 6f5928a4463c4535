"""``medsam3 batch`` end to end on real files: folders, DICOM trees and manifests as cases, outputs equal to
``infer``'s, failing cases, resumption after SIGKILL and SIGTERM, and two torchrun ranks against one.

Runs use the demo model on small phantoms (8 × 64 × 64 voxels). Most runs are in-process through
``medsam3_core.cli.batch.main``; kills and torchrun need real processes.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from builders import write_phantom_dicom
from medsam3_core.batch.cases import collect_cases
from medsam3_core.batch.records import DONE_RECORD
from medsam3_core.cli.batch import main as batch_main
from medsam3_core.cli.infer import main as infer_main
from medsam3_core.io.reading import read_volume, write_volume
from medsam3_core.phantom import make_abdomen_phantom

REPO = Path(__file__).resolve().parents[1]
SHAPE, SPACING = (8, 64, 64), (5.0, 5.0, 10.0)


def _batch(*args: str) -> int:
    return batch_main([*args, "--device", "cpu", "--progress", "none", "--quiet"])


def _write_scans(folder: Path, names: list[str], seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n, name in enumerate(names):
        ct, _, _ = make_abdomen_phantom(seed + n, shape=SHAPE, spacing=SPACING)
        write_volume(ct, folder / name)
        paths.append(folder / name)
    return paths


def _summary(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())["cases"]


def _report(folder: Path) -> dict:
    report = json.loads((folder / "report.json").read_text())
    report.pop("timings")
    return report


def _assert_same_case(a: Path, b: Path) -> None:
    """The same label map (voxels and geometry) and the same report apart from timings."""
    la, lb = read_volume(a / "labels.nii.gz"), read_volume(b / "labels.nii.gz")
    assert la.same_geometry(lb)
    np.testing.assert_array_equal(la.array, lb.array)
    assert _report(a) == _report(b)


def _hidden_leftovers(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """Three scans in three formats, run once with per-prompt masks."""
    root = tmp_path_factory.mktemp("folder")
    _write_scans(root / "scans", ["case_a.nii.gz", "case_b.nrrd", "case_c.mha"])
    code = _batch(str(root / "scans"), "-p", "liver", "spleen", "-o", str(root / "out"), "--per-segment")
    return code, root


def test_folder_every_image_is_a_case_written_as_infer_writes_it(folder_run):
    code, root = folder_run
    out = root / "out"
    assert code == 0
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["case_a", "case_b", "case_c"]
    rows = _summary(out)
    assert [(r["case"], r["status"], r["error"]) for r in rows] == [(n, "done", None) for n in ("case_a", "case_b",
                                                                                                  "case_c")]
    assert [s["prompt"] for s in rows[0]["segments"]] == ["liver", "spleen"]
    assert not _hidden_leftovers(out)

    infer_out = root / "infer_b"
    assert infer_main(["infer", str(root / "scans" / "case_b.nrrd"), "liver", "spleen", "-o", str(infer_out),
                       "--per-segment", "--device", "cpu", "--progress", "none", "--quiet"]) == 0
    _assert_same_case(out / "case_b", infer_out)
    assert sorted(p.name for p in (out / "case_b" / "masks").iterdir()) == ["liver.nii.gz", "spleen.nii.gz"]
    report = _report(out / "case_b")
    for seg, row_seg in zip(report["segments"], rows[1]["segments"]):
        assert (row_seg["volume_ml"], row_seg["score"]) == (seg["volume_ml"], seg["score"])

    with open(out / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["case"] for r in table] == ["case_a", "case_b", "case_c"]
    assert float(table[1]["liver mL"]) == rows[1]["segments"][0]["volume_ml"]
    assert "spleen score" in table[0] and "warnings" in table[0] and "error" in table[0]


def test_rerun_skips_done_cases_and_overwrite_redoes_them(folder_run):
    _, root = folder_run
    out = root / "out"
    before = {p: p.stat().st_mtime_ns for p in out.glob("case_*/*") if p.is_file()}
    assert _batch(str(root / "scans"), "-p", "liver", "spleen", "-o", str(out), "--per-segment") == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before
    assert [r["status"] for r in _summary(out)] == ["skipped"] * 3

    # other settings are another job: the cases are redone, not kept stale
    assert _batch(str(root / "scans"), "-p", "liver", "-o", str(out)) == 0
    assert [r["status"] for r in _summary(out)] == ["done"] * 3
    assert not (out / "case_a" / "masks").exists(), "a redone case folder holds only the new run's outputs"
    marker = (out / "case_a" / DONE_RECORD).stat().st_mtime_ns
    assert _batch(str(root / "scans"), "-p", "liver", "-o", str(out), "--overwrite") == 0
    assert (out / "case_a" / DONE_RECORD).stat().st_mtime_ns != marker
    assert [r["status"] for r in _summary(out)] == ["done"] * 3


def test_dicom_tree_every_series_is_a_case(tmp_path):
    tree = tmp_path / "tree"
    write_phantom_dicom(tree / "patient1" / "ct", seed=1, shape=SHAPE, spacing=SPACING)
    write_phantom_dicom(tree / "patient2" / "ct", seed=2, shape=(6, 64, 64), spacing=SPACING)
    out = tmp_path / "out"
    assert _batch(str(tree), "-p", "liver", "-o", str(out), "--dicom-seg", "seg.dcm", "--png", "png") == 0
    assert [(r["case"], r["status"]) for r in _summary(out)] == [("patient1_ct", "done"), ("patient2_ct", "done")]
    for case, slices in (("patient1_ct", 8), ("patient2_ct", 6)):
        labels = read_volume(out / case / "labels.nii.gz")
        assert labels.same_geometry(read_volume(tree / case.replace("_", "/")))
        assert labels.shape[0] == slices
        assert (out / case / "seg.dcm").is_file() and any((out / case / "png").iterdir())
    report = json.loads((out / "patient2_ct" / "report.json").read_text())
    assert report["input"]["path"] == str(tree / "patient2" / "ct")
    assert _summary(out)[1]["series"] == read_volume(tree / "patient2" / "ct").metadata["series_uid"]


def test_two_series_in_one_folder_are_told_apart(tmp_path):
    write_phantom_dicom(tmp_path / "dicom", seed=1, shape=SHAPE, spacing=SPACING)
    paths, *_ = write_phantom_dicom(tmp_path / "other", seed=2, shape=(6, 64, 64), spacing=SPACING)
    for path in paths:  # the second series moves into the first one's folder
        path.rename(tmp_path / "dicom" / f"b_{path.name}")
    cases = collect_cases([str(tmp_path / "dicom")], ["liver"], tmp_path / "out")
    assert [c.name for c in cases] == ["dicom_S1", "dicom_S1_2"]  # both series carry number 1
    assert len({c.series_uid for c in cases}) == 2 and {c.input for c in cases} == {str(tmp_path / "dicom")}


def test_csv_manifest_with_per_case_prompts_outputs_and_windows(tmp_path):
    scans = _write_scans(tmp_path / "scans", ["a.nii.gz", "b.nii.gz"])
    manifest = tmp_path / "cases.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["input", "prompts", "output", "modality", "window"])
        writer.writerow(["scans/a.nii.gz", "liver;spleen", "first", "CT", "40,400"])
        writer.writerow([str(scans[1]), "", "", "", ""])
    out = tmp_path / "out"
    assert _batch(str(manifest), "-p", "aorta", "-o", str(out)) == 0
    rows = _summary(out)
    assert [(r["case"], r["status"]) for r in rows] == [("first", "done"), ("b", "done")]
    first, second = _report(out / "first"), _report(out / "b")
    assert [s["prompt"] for s in first["segments"]] == ["liver", "spleen"]
    assert first["options"]["window"] == [40.0, 400.0]
    assert [s["prompt"] for s in second["segments"]] == ["aorta"], "a row without prompts takes -p"
    assert second["options"]["window"] is None


def test_jsonl_manifest(tmp_path):
    _write_scans(tmp_path / "scans", ["a.nii.gz", "b.nii.gz"])
    manifest = tmp_path / "cases.jsonl"
    lines = [{"input": "scans/a.nii.gz", "prompts": ["liver"]},
             {"input": "scans/b.nii.gz", "prompts": "spleen; liver", "output": str(tmp_path / "elsewhere" / "b")}]
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    out = tmp_path / "out"
    assert _batch(str(manifest), "-o", str(out)) == 0
    assert [(r["case"], r["status"]) for r in _summary(out)] == [("a", "done"), ("b", "done")]
    assert [s["prompt"] for s in _report(tmp_path / "elsewhere" / "b")["segments"]] == ["spleen", "liver"]


@pytest.mark.parametrize(
    "manifest, text, prompts, message",
    [
        ("cases.csv", "input,prompt\na.nii.gz,liver\n", ["-p", "liver"], "unknown column 'prompt'"),
        ("cases.csv", "input,prompts\na.nii.gz,\n", [], "line 2: no prompts"),
        ("cases.jsonl", '{"input": "a.nii.gz"}\n[1]\n', [], "line 2: each line must be a JSON object"),
        ("cases.jsonl", '{"input": "a.nii.gz", "output": "x"}\n{"input": "b.nii.gz", "output": "x"}\n',
         ["-p", "liver"], "would both write to"),
    ],
)
def test_bad_manifests_exit_2_with_one_line_and_nothing_written(tmp_path, capsys, manifest, text, prompts, message):
    (tmp_path / manifest).write_text(text)
    assert _batch(str(tmp_path / manifest), *prompts, "-o", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_bad_command_lines_exit_2(tmp_path, capsys):
    _write_scans(tmp_path / "scans", ["a.nii.gz"])
    for args, message in (([str(tmp_path / "scans")], "No prompts"),
                          ([str(tmp_path / "missing")], "Input not found"),
                          ([str(tmp_path / "scans"), "-p", "liver", "--dicom-seg", "/abs/seg.dcm"], "inside each case"),
                          ([str(tmp_path / "scans"), "-p", "liver", "--window", "nonsense"], "window")):
        assert _batch(*args, "-o", str(tmp_path / "out")) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_output_root_inside_the_input_folder_is_not_read_as_cases(tmp_path):
    _write_scans(tmp_path, ["a.nii.gz"])
    (tmp_path / "out" / "a").mkdir(parents=True)
    (tmp_path / "out" / "a" / "labels.nii.gz").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    _write_scans(tmp_path / "sub", ["a.nii.gz"], seed=3)
    assert [c.name for c in collect_cases([str(tmp_path)], ["liver"], tmp_path / "out")] == ["a", "sub_a"]


def test_failing_case_stops_the_run_or_is_recorded_with_continue_on_error(tmp_path, capsys):
    scans = tmp_path / "scans"
    _write_scans(scans, ["a.nii.gz", "c.nii.gz"])
    (scans / "b.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "out"

    assert _batch(str(scans), "-p", "liver", "-o", str(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'b'" in err[0] and "--continue-on-error" in err[0]
    rows = {r["case"]: r for r in _summary(out)}
    assert [rows[n]["status"] for n in "abc"] == ["done", "failed", "not run"]
    assert "b.nii.gz" in rows["b"]["error"]
    assert not (out / "b").exists() and not (out / "c").exists()

    assert _batch(str(scans), "-p", "liver", "-o", str(out), "--continue-on-error") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "1 of 3 cases failed" in err[0]
    assert [r["status"] for r in _summary(out)] == ["skipped", "failed", "done"]

    _write_scans(scans, ["b.nii.gz"], seed=5)  # fixed: a rerun runs only the case that failed
    assert _batch(str(scans), "-p", "liver", "-o", str(out)) == 0
    assert [r["status"] for r in _summary(out)] == ["skipped", "done", "skipped"]


def _start(args: list[str], *, torchrun: int = 0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "medsam3_core.batch"]
    if torchrun:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={torchrun}",
                    f"--master_port={port}", "-m", "medsam3_core.batch"]
    return subprocess.Popen([*launcher, *args, "--device", "cpu", "--progress", "json"], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop_after_first_case(proc: subprocess.Popen, sig: int) -> list[dict]:
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "case_done":
            proc.send_signal(sig)
            break
    rest, _ = proc.communicate(timeout=300)
    return events + [json.loads(line) for line in rest.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def six_scans(tmp_path_factory):
    root = tmp_path_factory.mktemp("six")
    _write_scans(root / "scans", [f"s{n}.nii.gz" for n in range(6)])
    assert _batch(str(root / "scans"), "-p", "liver", "-o", str(root / "clean")) == 0
    return root


def _done_cases(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob(f"*/{DONE_RECORD}")}


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_cases(six_scans):
    out = six_scans / "killed"
    proc = _start([str(six_scans / "scans"), "-p", "liver", "-o", str(out)])
    _stop_after_first_case(proc, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    finished = _done_cases(out)
    assert 1 <= len(finished) < 6, "the kill must land while cases remain"
    assert {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")} == set(finished), \
        "every visible case folder is a finished one"

    assert _batch(str(six_scans / "scans"), "-p", "liver", "-o", str(out)) == 0
    assert {k: v for k, v in _done_cases(out).items() if k in finished} == finished, "finished cases are not redone"
    rows = {r["case"]: r["status"] for r in _summary(out)}
    assert rows == {f"s{n}": ("skipped" if f"s{n}" in finished else "done") for n in range(6)}
    assert not _hidden_leftovers(out)
    for n in range(6):
        _assert_same_case(out / f"s{n}", six_scans / "clean" / f"s{n}")


@pytest.mark.slow
def test_sigterm_cancels_between_batches_and_leaves_only_finished_cases(six_scans):
    out = six_scans / "terminated"
    proc = _start([str(six_scans / "scans"), "-p", "liver", "-o", str(out)])
    events = _stop_after_first_case(proc, signal.SIGTERM)
    assert proc.returncode == 3
    assert events[-1]["event"] == "cancelled"
    finished = _done_cases(out)
    assert {p.name for p in out.iterdir() if p.is_dir()} == set(finished), "nothing half-written"
    assert [r["status"] for r in _summary(out)].count("not run") == 6 - len(finished)


@pytest.mark.slow
def test_two_torchrun_ranks_equal_one_rank_case_for_case(six_scans):
    out = six_scans / "two_ranks"
    proc = _start([str(six_scans / "scans"), "-p", "liver", "-o", str(out)], torchrun=2)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr[-2000:]
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    ranks = {e["rank"] for e in events if e["event"] == "case_done"}
    assert ranks == {0, 1}, "both ranks segmented cases"
    assert sum(e["event"] == "done" for e in events) == 1, "rank 0 alone reports the merged summary"
    one, two = _summary(six_scans / "clean"), _summary(out)
    assert [(r["case"], r["status"], r["segments"]) for r in two] == [(r["case"], r["status"], r["segments"])
                                                                       for r in one]
    for n in range(6):
        _assert_same_case(out / f"s{n}", six_scans / "clean" / f"s{n}")


def test_batch_is_a_medsam3_command_with_examples(capsys):
    from medsam3_core.cli.main import SUBCOMMANDS, main

    assert "batch" in SUBCOMMANDS
    with pytest.raises(SystemExit) as stop:
        main(["batch", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "torchrun --nproc_per_node" in text and "--continue-on-error" in text and "--dicom-seg" in text
