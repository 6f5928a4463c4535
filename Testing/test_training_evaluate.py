"""The evaluation protocol's scoring, its report files, and scoring of inference outputs from files."""

import csv

import nibabel as nib
import numpy as np
import pytest

from medsam3_core.errors import InputError

from training.evaluate import largest_area_window, main, score_label_maps, summarize


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


def test_the_window_is_8_slices_centred_on_the_largest_ground_truth_slice():
    mask = np.zeros((20, 5, 5), bool)
    mask[6:15, 2, 2] = True
    mask[11, :3, :3] = True  # slice 11 has the largest area
    assert largest_area_window(mask) == slice(7, 15)  # 11 - 4 … 11 + 3
    assert largest_area_window(np.moveaxis(mask, 0, 2), axis=2) == slice(7, 15)
    edge = np.zeros((20, 5, 5), bool)
    edge[1] = True
    assert largest_area_window(edge) == slice(0, 8)  # shifted inwards at the ends, still 8 slices
    edge[1], edge[19] = False, True
    assert largest_area_window(edge) == slice(12, 20)
    assert largest_area_window(np.ones((5, 2, 2), bool)) == slice(0, 5)  # thinner than 8: all of it
    assert largest_area_window(np.zeros((20, 2, 2), bool)) == slice(0, 20)  # nothing to centre on


def test_window8_scores_only_the_window_while_volume_scores_every_slice():
    """A liver on slices 5–14 (largest on 10), predicted right on slices 6–13 and falsely on slices 0–1."""
    gt = np.zeros((20, 4, 4), np.int32)
    gt[5:15, :2, :2] = 1
    gt[10, :3, :3] = 1
    pred = np.zeros_like(gt)
    pred[6:14] = gt[6:14]
    pred[0:2, :2, :2] = 1
    window = score_label_maps(pred, gt, {1: "liver"}, "d", "case", protocol="window8")[0]
    volume = score_label_maps(pred, gt, {1: "liver"}, "d", "case", protocol="volume")[0]
    assert largest_area_window(gt == 1) == slice(6, 14)
    assert window.dice == pytest.approx(1.0)  # slices 6–13: exactly right
    right, truth, predicted = int((pred[6:14] == 1).sum()), int((gt == 1).sum()), int((pred == 1).sum())
    assert volume.dice == pytest.approx(2 * right / (truth + predicted))
    with pytest.raises(InputError, match="Unknown evaluation protocol 'best'"):
        score_label_maps(pred, gt, {1: "liver"}, "d", "case", protocol="best")


def test_command_reports_both_protocols_side_by_side(tmp_path, capsys):
    pred, gt = tmp_path / "pred", tmp_path / "gt"
    pred.mkdir(), gt.mkdir()
    truth = np.zeros((4, 4, 20), np.uint8)  # NIfTI (i, j, k): k is the axial axis
    truth[:2, :2, 5:15] = 1
    truth[:3, :3, 10] = 1  # the largest slice: the window is slices 6–13
    guess = truth.copy()
    guess[:2, :2, 0:2] = 1  # false positives far from the largest slice
    nib.save(nib.Nifti1Image(truth, np.eye(4)), gt / "case1.nii.gz")
    nib.save(nib.Nifti1Image(guess, np.eye(4)), pred / "case1.nii.gz")
    (tmp_path / "labels.json").write_text('{"1": "liver"}')
    argv = ["--pred", str(pred), "--gt", str(gt), "--labels", str(tmp_path / "labels.json"), "-o", str(tmp_path / "r")]
    assert main([*argv, "--protocol", "volume", "window8"]) == 0
    rows = {(r["dataset"], r["concept"]): r for r in csv.DictReader((tmp_path / "r" / "metrics.csv").open())}
    assert float(rows[("gt [window8]", "liver")]["dice"]) == pytest.approx(1.0)
    assert float(rows[("gt [volume]", "liver")]["dice"]) == pytest.approx(2 * 45 / (45 + 53), abs=1e-4)
    capsys.readouterr()


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


class _HandMadeDetector:
    """Stands in for ``medsam3_core.engine.detector.Detector`` on one 16² image with prompts "organ" and "lesion":
    "organ" (present) has one correct mask scoring 0.42; "lesion" (absent) one false positive scoring 0.27."""

    bundle = type("B", (), {"device": "cpu"})

    def letterbox(self, height, width):
        from medsam3_core.engine.preprocess import Letterbox

        return Letterbox(height, width, 16)

    def encode_images(self, pixels):
        return pixels

    def encode_text(self, prompts):
        assert list(prompts) == ["organ", "lesion"]
        return prompts

    def detect(self, vision, text):
        import torch

        from medsam3_core.engine.detector import Detections

        logits = torch.full((1, 2, 1, 16, 16), -10.0)
        logits[0, 0, 0, 4:10, 4:10] = 10.0  # the organ, exactly
        logits[0, 1, 0, 12:15, 12:15] = 10.0  # a lesion that is not there
        scores = torch.tensor([[[0.42], [0.27]]])
        return Detections(logits, scores, torch.ones(1, 2), torch.zeros(1, 2, 1, 4))


def test_calibration_picks_the_threshold_with_the_best_selection_score():
    from training.evaluate import CALIBRATION_THRESHOLDS, _predict_label_maps, pick_threshold

    gt = np.zeros((16, 16), np.int32)
    gt[4:10, 4:10] = 1
    concepts = {1: "organ", 2: "lesion"}
    maps = _predict_label_maps(_HandMadeDetector(), [np.zeros((16, 16), np.float32)], concepts,
                               CALIBRATION_THRESHOLDS, "top1")
    rows = {t: summarize(score_label_maps(m[0], gt, concepts, "d", "img"))
            for t, m in zip(CALIBRATION_THRESHOLDS, maps)}
    threshold, selection = pick_threshold(rows)
    # ≤ 0.25: the false lesion counts (selection (0.5 + 1) / 2); 0.3–0.4: both right (1.0);
    # ≥ 0.45: the organ is lost ((0.5 + 0) / 2)
    assert selection[0.25] == pytest.approx(0.75) and selection[0.45] == pytest.approx(0.25)
    assert [t for t, v in selection.items() if v == 1.0] == [0.3, 0.35, 0.4]
    assert threshold == 0.4  # a tie goes to the threshold nearest 0.5


def test_pick_threshold_prefers_the_best_score_then_the_one_nearest_one_half():
    from training.evaluate import Row, pick_threshold

    def rows(dice):
        return [Row("d", "all", 1, dice, dice, 1, dice)]

    assert pick_threshold({0.2: rows(0.9), 0.5: rows(0.8), 0.7: rows(0.6)})[0] == 0.2
    assert pick_threshold({0.3: rows(0.8), 0.6: rows(0.8), 0.9: rows(0.1)})[0] == 0.6
    with pytest.raises(ValueError):
        pick_threshold({})
