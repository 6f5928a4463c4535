"""Known-answer tests of each loss term and of the criterion's weighting and normalisation."""

import math

import pytest
import torch

from training.losses.boxes import masks_to_boxes, pairwise_giou
from training.losses.criterion import LossConfig, SetCriterion, Target
from training.losses.terms import box_l1_loss, dice_loss, giou_loss, mask_focal_loss, presence_loss, sigmoid_focal_loss
from training.engine.outputs import DetectorOutputs

LN2 = math.log(2.0)


def test_sigmoid_focal_loss_known_values():
    z = torch.zeros(2)
    t = torch.tensor([1.0, 0.0])
    # at p = 0.5: CE = ln2, (1 − p_t)² = 0.25, α_t = 0.25 for positives and 0.75 for negatives
    assert torch.allclose(sigmoid_focal_loss(z, t), torch.tensor([0.0625 * LN2, 0.1875 * LN2]), atol=1e-6)
    assert torch.allclose(sigmoid_focal_loss(z, t, pos_weight=10.0), torch.tensor([0.625 * LN2, 0.1875 * LN2]))
    # γ = 0 and no α: plain binary cross-entropy
    assert torch.allclose(sigmoid_focal_loss(torch.tensor([2.0]), torch.tensor([1.0]), alpha=-1, gamma=0),
                          torch.tensor([math.log(1 + math.exp(-2.0))]), atol=1e-6)


def test_presence_loss_is_summed_bce():
    assert presence_loss(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0])).item() == pytest.approx(3 * LN2, abs=1e-6)


def test_box_terms():
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    b = torch.tensor([[0.5, 0.5, 1.0, 1.0]])
    assert box_l1_loss(a, b).item() == pytest.approx(1.0)  # centres differ by 0.5 in x and y, sizes equal
    assert giou_loss(a, a).item() == pytest.approx(0.0, abs=1e-6)
    assert giou_loss(a, b).item() == pytest.approx(1.5)  # GIoU = 0 − (1 − 0.5)/1
    assert pairwise_giou(a, b).item() == pytest.approx(-0.5)


def test_mask_terms():
    logits = torch.full((1, 2, 2), 20.0)  # predicts all four pixels
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]])
    assert dice_loss(logits, target).item() == pytest.approx(1 - 5 / 7, abs=1e-6)  # (2·2+1)/(4+2+1)
    assert mask_focal_loss(torch.zeros(1, 2, 2), target, alpha=0.6).item() == pytest.approx(
        (2 * 0.6 + 2 * 0.4) * 0.25 * LN2 / 4, abs=1e-6
    )


def test_masks_to_boxes_uses_pixel_edges():
    m = torch.zeros(1, 4, 8, dtype=torch.bool)
    m[0, 1:3, 2:6] = True
    assert masks_to_boxes(m).tolist() == [[0.25, 0.25, 0.75, 0.75]]


def _outputs(layers=2, batch=2, queries=6, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(layers, batch, queries, 2, generator=g) * 0.5
    boxes = torch.cat([xy, xy + 0.2 + 0.3 * torch.rand(layers, batch, queries, 2, generator=g)], -1)
    return DetectorOutputs(
        logits=torch.randn(layers, batch, queries, generator=g),
        boxes=boxes,
        presence=torch.randn(layers, batch, generator=g),
        masks=torch.randn(batch, queries, size, size, generator=g),
        semantic=torch.randn(batch, 1, size, size, generator=g),
    )


def _target(n, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size)
    for i in range(n):
        y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
        masks[i, y : y + 5, x : x + 6] = 1
    return Target(masks, masks_to_boxes(masks.bool()))


def test_criterion_normalises_by_instances_of_the_whole_batch():
    out = _outputs()
    t0, t1 = _target(1, seed=1), _target(2, seed=2)
    crit = SetCriterion()
    both, logs = crit(out, [t0, t1])
    assert logs["num_instances"] == 3.0

    def single(b, t):
        o = DetectorOutputs(out.logits[:, b : b + 1], out.boxes[:, b : b + 1], out.presence[:, b : b + 1],
                            out.masks[b : b + 1], out.semantic[b : b + 1])
        return crit(o, [t])[0]

    # every term is a sum over prompts, so the batch loss is the instance-weighted mean of the single losses
    assert both.item() == pytest.approx((single(0, t0).item() * 1 + single(1, t1).item() * 2) / 3, rel=1e-5)


def test_criterion_negative_prompt_has_only_classification_and_presence():
    crit = SetCriterion(LossConfig(aux_layers=False))
    _, logs = crit(_outputs(), [Target(torch.zeros(0, 16, 16), torch.zeros(0, 4))] * 2)
    assert logs["l1"] == 0 and logs["giou"] == 0 and logs["dice"] == 0 and logs["mask_focal"] == 0
    assert logs["cls"] > 0 and logs["presence"] > 0 and logs["num_instances"] == 1.0


def test_criterion_presence_weight_and_aux_layers():
    out = _outputs()
    t = [_target(1, seed=3), _target(1, seed=4)]
    base = SetCriterion(LossConfig(aux_layers=False))(out, t)[1]
    aux = SetCriterion(LossConfig(aux_layers=True))(out, t)[1]
    # presence BCE of the last layer, weight 20, two prompts (both present), normalised by 2 instances
    bce = torch.nn.functional.binary_cross_entropy_with_logits(out.presence[-1], torch.ones(2), reduction="sum")
    expected = 20 * bce / 2
    assert base["presence"] == pytest.approx(float(expected), rel=1e-5)
    assert aux["presence"] > base["presence"]  # the first decoder layer adds its own term


def test_criterion_gradients_reach_all_outputs():
    out = _outputs()
    for f in ("logits", "boxes", "presence", "masks", "semantic"):
        getattr(out, f).requires_grad_(True)
    loss, _ = SetCriterion()(out, [_target(1), _target(2)])
    loss.backward()
    assert all(getattr(out, f).grad.abs().sum() > 0 for f in ("logits", "boxes", "presence", "masks", "semantic"))
