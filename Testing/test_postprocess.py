"""Instances from raw detections, the paper's top-instance and pixel-wise-max rules, and 3D clean-up (known answers)."""

import numpy as np
import pytest
import torch

from medsam3_core.engine.detector import Detections
from medsam3_core.engine.postprocess import (
    Instance,
    fill_holes,
    instances_for,
    largest_component,
    pixelwise_max_labelmap,
    top_instance,
    volume_ml,
)
from medsam3_core.engine.preprocess import Letterbox


def _detections() -> tuple[Detections, Letterbox]:
    """A 8×16 image letterboxed into 16² (valid rows 0–7); four queries with hand-set masks and scores."""
    box = Letterbox(8, 16, 16)
    logits = torch.full((1, 1, 4, 16, 16), -10.0)
    logits[0, 0, 0, 2:6, 4:8] = 10.0  # query 0: strong, rows 2-5, cols 4-7
    logits[0, 0, 1, 0:8, 0:16] = 10.0  # query 1: below the threshold
    logits[0, 0, 3, 1:3, 10:14] = 10.0  # query 3: weaker, rows 1-2, cols 10-13
    logits[0, 0, 3, 8:, :] = 10.0  # … plus junk in the padding, which must not leak back
    scores = torch.tensor([[[0.9, 0.3, 0.7, 0.6]]])  # query 2 passes but its mask is empty
    boxes = torch.tensor(
        [[[[0.25, 0.125, 0.5, 0.375], [0, 0, 1, 0.5], [0, 0, 0.1, 0.1], [0.625, 0.0625, 0.875, 0.1875]]]]
    )
    return Detections(logits, scores, torch.tensor([[0.95]]), boxes), box


def test_instances_are_thresholded_sorted_cropped_and_non_empty():
    detections, box = _detections()
    found = instances_for(detections, 0, 0, box, threshold=0.5)
    assert [round(i.score, 3) for i in found] == [0.9, 0.6]
    expected0 = np.zeros((8, 16), bool)
    expected0[2:6, 4:8] = True
    expected3 = np.zeros((8, 16), bool)
    expected3[1:3, 10:14] = True
    assert np.array_equal(found[0].mask, expected0) and np.array_equal(found[1].mask, expected3)
    assert found[0].box == pytest.approx((4.0, 2.0, 8.0, 6.0)) and found[0].area == 16
    assert found[0].probability.shape == (8, 16) and found[0].probability.max() > 0.99
    assert instances_for(detections, 0, 0, box, threshold=0.95) == []
    assert len(instances_for(detections, 0, 0, box, threshold=0.0)) == 3  # query 1 too, query 2 still dropped


def test_top_instance_is_the_most_confident():
    a, b = Instance(np.ones((2, 2), bool), (0, 0, 2, 2), 0.4), Instance(np.ones((2, 2), bool), (0, 0, 2, 2), 0.8)
    assert top_instance([a, b]) is b and top_instance([]) is None


def test_pixelwise_max_with_presence_flags():
    probs = np.array([[0.9, 0.6, 0.2, 0.7], [0.7, 0.8, 0.4, 0.1]], dtype=np.float32)
    labels, conf = pixelwise_max_labelmap(probs, np.array([True, True]))
    assert labels.tolist() == [1, 2, 0, 1] and labels.dtype == np.uint8
    np.testing.assert_allclose(conf, [0.9, 0.8, 0.0, 0.7])
    labels, _ = pixelwise_max_labelmap(probs, [True, False])
    assert labels.tolist() == [1, 1, 0, 1]


def test_pixelwise_max_weights_overlaps_by_detection_score():
    probs = np.array([[0.9, 0.6, 0.2], [0.7, 0.8, 0.9]], dtype=np.float32)
    labels, conf = pixelwise_max_labelmap(probs, np.array([1.0, 0.5]))
    assert labels.tolist() == [1, 1, 2]  # 0.6·1.0 beats 0.8·0.5; prompt 2 alone where prompt 1 is below 0.5
    np.testing.assert_allclose(conf, [0.9, 0.6, 0.45])
    labels, _ = pixelwise_max_labelmap(probs, [0.0, 0.5])  # score 0 = absent
    assert labels.tolist() == [2, 2, 2]


def test_pixelwise_max_in_3d_and_beyond_255_prompts():
    probs = np.zeros((2, 2, 3, 4), np.float32)
    probs[1, 1, 2, 3] = 0.9
    labels, _ = pixelwise_max_labelmap(probs, [True, True])
    assert labels.shape == (2, 3, 4) and labels[1, 2, 3] == 2 and labels.sum() == 2
    many = np.zeros((300, 1, 1), np.float32)
    many[299] = 1.0
    labels, _ = pixelwise_max_labelmap(many, np.ones(300, bool))
    assert labels.dtype == np.uint16 and labels[0, 0] == 300
    with pytest.raises(ValueError):
        pixelwise_max_labelmap(probs, [True])


def test_largest_component_keeps_the_biggest_blob():
    mask = np.zeros((5, 10, 10), bool)
    mask[1:4, 1:4, 1:4] = True  # 27 voxels
    mask[0, 8:, 8:] = True  # 4 voxels
    mask[4, 4, 4] = True  # diagonal neighbour of nothing → separate
    kept = largest_component(mask)
    assert kept.sum() == 27 and kept[2, 2, 2] and not kept[0, 9, 9]
    assert not largest_component(np.zeros((3, 3), bool)).any()


def test_fill_holes_3d_cavity_and_slicewise_open_hole():
    cube = np.ones((5, 5, 5), bool)
    cube[2, 2, 2] = False  # enclosed cavity
    assert fill_holes(cube).all()
    tube = np.zeros((4, 5, 5), bool)
    tube[:, 1:4, 1:4] = True
    tube[:, 2, 2] = False  # a channel through every slice: open in 3D, a hole on each axial slice
    assert not fill_holes(tube)[:, 2, 2].any()
    assert fill_holes(tube, axis=0)[:, 2, 2].all()
    assert not fill_holes(tube, axis=2)[:, 2, 2].all()  # along another axis the channel is not enclosed


def test_volume_ml():
    assert volume_ml(1000, (1.0, 1.0, 1.0)) == pytest.approx(1.0)
    assert volume_ml(np.ones((10, 10, 10), bool), (0.5, 0.5, 2.0)) == pytest.approx(0.5)
