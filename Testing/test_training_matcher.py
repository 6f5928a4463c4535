"""Known-answer tests of the one-to-one (Hungarian) and one-to-many matchers, computed by hand."""

import math

import pytest
import torch

from training.losses.matcher import HungarianMatcher, OneToManyMatcher, focal_class_cost

LN2 = math.log(2.0)


def test_focal_class_cost_at_even_odds():
    # p = 0.5: positive cost 0.25·0.5²·ln2, negative cost 0.75·0.5²·ln2 → difference −0.125·ln2
    assert torch.allclose(focal_class_cost(torch.tensor([0.0])), torch.tensor([-0.125 * LN2]), atol=1e-6)


def test_hungarian_cost_matrix_and_assignment():
    logits = torch.zeros(2)
    pred = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    gt = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.5, 0.5]])
    m = HungarianMatcher()  # w_cls 2, w_box 5, w_giou 2
    cost = m.cost(logits, pred, gt)
    cls = 2 * (-0.125 * LN2)
    # identical boxes: L1 0, GIoU 1 → cost cls − 2; disjoint quarter boxes: L1 (cxcywh) 1.0, GIoU −0.5
    expected = torch.tensor([[cls + 5.0 + 1.0, cls - 2.0], [cls - 2.0, cls + 5.0 + 1.0]])
    assert torch.allclose(cost, expected, atol=1e-5)
    match = m(logits, pred, gt)
    assert dict(zip(match.pred.tolist(), match.gt.tolist())) == {0: 1, 1: 0}


def test_hungarian_prefers_the_confident_query_for_equal_boxes():
    box = torch.tensor([[0.1, 0.1, 0.4, 0.4]])
    match = HungarianMatcher()(torch.tensor([-2.0, 2.0, 0.0]), box.repeat(3, 1), box)
    assert match.pred.tolist() == [1] and match.gt.tolist() == [0]


def test_hungarian_without_ground_truth_matches_nothing():
    match = HungarianMatcher()(torch.zeros(5), torch.rand(5, 4), torch.zeros(0, 4))
    assert len(match) == 0


def test_one_to_many_quality_threshold_and_topk():
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    pred = torch.tensor(
        [
            [0.0, 0.0, 0.5, 0.5],  # IoU 1
            [0.0, 0.0, 0.5, 0.25],  # IoU 0.5
            [0.6, 0.6, 0.9, 0.9],  # IoU 0
        ]
    )
    logits = torch.tensor([2.0, 0.0, 5.0])
    m = OneToManyMatcher(topk=4, threshold=0.4, alpha=0.3)
    q = m.quality(logits, pred, gt)[:, 0]
    p0 = 1 / (1 + math.exp(-2.0))
    assert torch.allclose(q, torch.tensor([p0**0.3, 0.5**0.3 * 0.5**0.7, 0.0]), atol=1e-6)
    assert sorted(m(logits, pred, gt).pred.tolist()) == [0, 1]
    assert OneToManyMatcher(topk=4, threshold=0.6)(logits, pred, gt).pred.tolist() == [0]
    assert OneToManyMatcher(topk=1, threshold=0.0)(logits, pred, gt).pred.tolist() == [0]


def test_one_to_many_query_goes_to_its_best_ground_truth():
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.5, 0.4]])
    pred = torch.tensor([[0.0, 0.0, 0.5, 0.45]])  # IoU 0.9 with gt0, 0.889 with gt1
    match = OneToManyMatcher(topk=4, threshold=0.1)(torch.tensor([3.0]), pred, gt)
    assert match.pred.tolist() == [0] and match.gt.tolist() == [0]


def test_optional_mask_cost_decides_between_equal_boxes():
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    gt_mask = torch.zeros(1, 4, 4)
    gt_mask[0, :2] = 1
    masks = torch.full((2, 4, 4), -20.0)
    masks[1, :2] = 20.0  # query 1 predicts exactly the ground-truth mask
    m = HungarianMatcher(w_mask=5.0)
    cost = m.cost(torch.zeros(2), box.repeat(2, 1), box, masks, gt_mask)
    assert float(cost[0, 0] - cost[1, 0]) == pytest.approx(5.0 * (1 - 1 / 9), abs=1e-4)  # Dice 1/9 vs 1
    assert m(torch.zeros(2), box.repeat(2, 1), box, masks, gt_mask).pred.tolist() == [1]
    assert torch.equal(HungarianMatcher().cost(torch.zeros(2), box.repeat(2, 1), box, masks, gt_mask)[:, 0].diff(),
                       torch.zeros(1))  # the paper's matcher ignores masks
