"""Dice / IoU / surface distances: known answers and the explicit empty-mask convention."""

import math

import numpy as np
import pytest

from medsam3_core.metrics import (
    average_surface_distance,
    dice,
    dice_per_label,
    hausdorff95,
    iou,
    iou_per_label,
    surface_distances,
)


def _masks():
    pred, gt = np.zeros((4, 4), bool), np.zeros((4, 4), bool)
    pred[0, 0:4] = True  # 4 pixels
    gt[0, 2:4] = True
    gt[1, 0:4] = True  # 6 pixels, 2 shared
    return pred, gt


def test_dice_and_iou_known_answers():
    pred, gt = _masks()
    assert dice(pred, gt) == pytest.approx(2 * 2 / 10)
    assert iou(pred, gt) == pytest.approx(2 / 8)
    assert dice(gt, gt) == iou(gt, gt) == 1.0


def test_empty_convention_counts_false_positives_and_misses():
    empty, some = np.zeros((3, 3)), np.eye(3)
    assert dice(empty, empty) == iou(empty, empty) == 1.0
    assert dice(some, empty) == iou(some, empty) == 0.0  # prediction on an empty image: a false positive
    assert dice(empty, some) == iou(empty, some) == 0.0  # missed object
    with pytest.raises(ValueError):
        dice(np.zeros((2, 2)), np.zeros((2, 3)))


def test_per_label_metrics():
    pred = np.array([[1, 1, 2, 0], [0, 0, 0, 3]])
    gt = np.array([[1, 0, 2, 2], [0, 0, 0, 0]])
    scores = dice_per_label(pred, gt)
    assert scores == pytest.approx({1: 2 / 3, 2: 2 / 3, 3: 0.0})
    assert iou_per_label(pred, gt, labels=[1, 4]) == pytest.approx({1: 0.5, 4: 1.0})


def test_surface_distances_single_voxels_with_anisotropic_spacing():
    pred, gt = np.zeros((6, 6), bool), np.zeros((6, 6), bool)
    pred[0, 0] = gt[3, 4] = True
    assert hausdorff95(pred, gt) == pytest.approx(5.0)
    assert average_surface_distance(pred, gt) == pytest.approx(5.0)
    assert hausdorff95(pred, gt, spacing=(2.0, 1.0)) == pytest.approx(math.sqrt(36 + 16))


def test_surface_distances_of_shifted_slab_in_3d():
    gt = np.zeros((10, 6, 6), bool)
    gt[2:5] = True
    pred = np.roll(gt, 2, axis=0)  # slab shifted two slices
    forward, backward = surface_distances(pred, gt, spacing=(3.0, 1.0, 1.0))
    assert forward.max() == pytest.approx(6.0) and backward.max() == pytest.approx(6.0)
    assert hausdorff95(pred, gt, spacing=(3.0, 1.0, 1.0)) <= 6.0
    assert hausdorff95(gt, gt) == average_surface_distance(gt, gt) == 0.0


def test_surface_distance_empty_convention():
    empty, some = np.zeros((4, 4), bool), np.eye(4, dtype=bool)
    assert hausdorff95(empty, empty) == average_surface_distance(empty, empty) == 0.0
    assert math.isinf(hausdorff95(some, empty)) and math.isinf(average_surface_distance(empty, some))
    with pytest.raises(ValueError):
        hausdorff95(some, some, spacing=(1.0, 1.0, 1.0))
