"""Training data is checked before a run starts: every problem of a broken nnU-Net dataset is one line, the
``--check-data`` dry run lists them all, training refuses to start on them, and resuming a checkpoint written with
other model settings is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from builders import write_nnunet_dataset

from training.run import main


def _case(seed: int, extra_label: int = 0, channels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    shape = (24, 24, 3)
    image = rng.normal(0, 50, shape + ((channels,) if channels else ())).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[6:16, 6:16, :] = 1
    if extra_label:
        label[18:22, 18:22, 1] = extra_label
    return image, label


def _dataset(root: Path, cases=None) -> Path:
    return write_nnunet_dataset(root, cases or [_case(0), _case(1), _case(2)], {"liver": 1})


def _check(capsys, *sources: str) -> tuple[int, list[str]]:
    code = main(["--config", "demo", "--check-data", *(f"--data={s}" for s in sources)])
    return code, capsys.readouterr().err.strip().splitlines()


def test_a_good_dataset_passes_the_check(tmp_path, capsys):
    code = main(["--config", "demo", "--check-data", f"--data=nnunet:{_dataset(tmp_path / 'ds')}"])
    out = capsys.readouterr()
    assert code == 0 and out.err == "" and "3 case(s): no problems" in out.out


def _remove(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(
    "breakage, expected",
    [
        (lambda r: _remove(r / "labelsTr" / "case01.nii.gz"),
         ["label labelsTr/case01.nii.gz for image imagesTr/case01_0000.nii.gz is missing"]),
        (lambda r: _remove(r / "imagesTr" / "case02_0000.nii.gz"),
         ["image imagesTr/case02_0000.nii.gz for label labelsTr/case02.nii.gz is missing"]),
        (lambda r: (r / "imagesTr" / "case00_0000.nii.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4),
         ["case00: image case00_0000.nii.gz:"]),
        (lambda r: (r / "dataset.json").write_text('{"labels": {"liver": 1,}'), ["dataset.json: not valid JSON"]),
        (lambda r: (r / "dataset.json").write_text(json.dumps({"labels": ["background", "liver"]})),
         ["labels must map each name to its value"]),
        (lambda r: (r / "label_to_text.json").write_text(json.dumps({"1": ["liver"]})),
         ["label_to_text.json: expected a JSON object"]),
        (lambda r: (r / "label_to_text.json").write_text(json.dumps({"1": "liver", "2": "spleen"})),
         ["label_to_text.json: gives texts for the label values [1, 2], but dataset.json declares [1]"]),
    ],
    ids=["missing-label", "missing-image", "corrupt-image", "malformed-json", "labels-as-list",
         "label-to-text-not-text", "label-to-text-undeclared"],
)
def test_each_problem_is_one_line(tmp_path, capsys, breakage, expected):
    root = _dataset(tmp_path / "ds")
    breakage(root)
    code, lines = _check(capsys, f"nnunet:{root}")
    assert code == 2
    assert len(lines) == len(expected), lines
    for line, part in zip(lines, expected):
        assert line.startswith("error: ds") and part in line, line
    assert "Traceback" not in "\n".join(lines)


def test_every_problem_of_a_dataset_is_listed_at_once(tmp_path, capsys):
    cases = [_case(0, extra_label=7), _case(1, channels=2), _case(2), _case(3, extra_label=3)]
    root = _dataset(tmp_path / "ds", cases)
    code, lines = _check(capsys, f"nnunet:{root}", "phantom:1")
    assert code == 2
    assert any("ds/case00:" in line and "label value(s) [7] are not declared (declared: [1])" in line for line in lines)
    assert any("ds/case01:" in line and "case01_0000.nii.gz" in line for line in lines), lines  # two channels
    assert any("ds/case03:" in line and "[3] are not declared" in line for line in lines)
    assert any("phantom: 1 case, but splitting into training and validation needs at least 2" in line
               for line in lines)
    assert len(lines) == 4, lines


def test_training_does_not_start_on_bad_data(tmp_path, capsys):
    root = _dataset(tmp_path / "ds", [_case(0), _case(1, extra_label=5), _case(2)])
    out = tmp_path / "run"
    code = main(["--config", "demo", f"--data=nnunet:{root}", "--output-dir", str(out)])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "label value(s) [5] are not declared" in lines[0], lines
    assert not (out / "checkpoints").exists()


def _tiny_run(tmp_path: Path, out: Path, **model) -> list[str]:
    from test_training_engine import _blob_folder, _config, _random_square

    blobs = tmp_path / "blobs"
    if not blobs.exists():
        blobs.mkdir()
        _blob_folder(blobs, "b", 8, (56, 56), 0, _random_square)
    cfg = _config(blobs, out, max_steps=1)
    for key, value in model.items():
        setattr(cfg.model, key, value)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    return ["--config", str(path)]


def test_resume_refuses_a_checkpoint_with_other_model_settings(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_tiny_run(tmp_path, out)) == 0
    capsys.readouterr()
    assert main(_tiny_run(tmp_path, out, num_queries=12, text_hidden=48)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "model.text_hidden=32 (now 48), model.num_queries=8 (now 12)" in lines[0]
    assert "new --output-dir" in lines[0]
