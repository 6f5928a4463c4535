"""The evaluation protocol's scoring, its report files, and scoring of inference outputs from files."""

import csv

import nibabel as nib
import numpy as np
import pytest

from training.evaluate import main, score_label_maps, summarize


def test_scores_count_empty_ground_truth():
    gt = np.zeros((4, 4), np.int32)
    gt[:2, :2] = 1
    pred = np.zeros((4, 4), np.int32)
    pred[:2, :1] = 1  # half of the liver
    pred[3, 3] = 2  # a false positive spleen on an image without spleen
    scores = score_label_maps(pred, gt, {1: "liver", 2: "spleen", 3: "kidney"}, "d", "img")
    by = {s.concept: s for s in scores}
    assert by["liver"].dice == pytest.approx(2 * 2 / (2 + 4)) and by["liver"].iou == pytest.approx(0.5)
    assert by["spleen"].dice == 0.0 and by["spleen"].gt_empty  # predicted on empty ground truth → 0
    assert by["kidney"].dice == 1.0 and by["kidney"].gt_empty  # correctly nothing → 1
    rows = {r.concept: r for r in summarize(scores)}
    assert rows["all"].n == 3 and rows["all"].dice == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert rows["all"].n_present == 1 and rows["all"].dice_present == pytest.approx(2 / 3)


def test_command_scores_prediction_files_and_writes_report(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    gt.mkdir()
    (pred / "case1").mkdir(parents=True)  # a `medsam3 infer -o pred/case1` output folder
    a = np.zeros((6, 6, 3), np.uint8)
    a[1:4, 1:4] = 1
    nib.save(nib.Nifti1Image(a, np.eye(4)), gt / "case1.nii.gz")
    nib.save(nib.Nifti1Image(a, np.eye(4)), pred / "case1" / "labels.nii.gz")
    (tmp_path / "labels.json").write_text('{"1": "liver"}')
    out = tmp_path / "report"
    assert main(["--pred", str(pred), "--gt", str(gt), "--labels", str(tmp_path / "labels.json"), "-o", str(out)]) == 0
    assert "liver" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert rows[0]["concept"] == "liver" and float(rows[0]["dice"]) == 1.0
    assert (out / "dice.png").read_bytes()[:4] == b"\x89PNG" and "mean over datasets" in (out / "table.txt").read_text()
    assert main(["--pred", str(pred), "-o", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: --pred needs --gt and --labels")
