"""SharedHeads: the detector heads with per-slice sharing must equal ``Sam3Model.forward`` pair by pair."""

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from medsam3_core.engine.detector import Detector
from medsam3_core.engine.heads import EMPTY_MASK_LOGIT, SharedHeads

PROMPTS = ["liver", "left kidney", "spleen", "aorta"]


@pytest.fixture(scope="module")
def encoded(random_bundle):
    torch.manual_seed(5)
    detector = Detector(random_bundle)
    vision = detector.encode_images(torch.rand(2, 3, random_bundle.image_size, random_bundle.image_size) * 2 - 1)
    return vision, detector.encode_text(PROMPTS)


def _reference(model, vision, text, slice_idx, prompt_idx):
    """``Sam3Model.forward`` on explicitly laid-out pairs, queries ordered best first like SharedHeads."""
    pairs = Sam3VisionEncoderOutput(
        fpn_hidden_states=tuple(t[slice_idx] for t in vision.fpn_hidden_states),
        fpn_position_encoding=tuple(t[slice_idx] for t in vision.fpn_position_encoding),
    )
    with torch.inference_mode():
        out = model(vision_embeds=pairs, text_embeds=BaseModelOutputWithPooling(pooler_output=text.embeds[prompt_idx]),
                    attention_mask=text.attention_mask[prompt_idx])
    presence = out.presence_logits.sigmoid()
    scores = out.pred_logits.sigmoid() * presence
    order = scores.argsort(dim=1, descending=True)
    rows = torch.arange(order.shape[0])[:, None]
    return scores.gather(1, order), presence[:, 0], out.pred_masks[rows, order], out.pred_boxes[rows, order]


@pytest.mark.parametrize("shared_from", [1, 10**6], ids=["shared-pixel-decoder", "direct-pixel-decoder"])
def test_heads_equal_the_full_forward(random_bundle, encoded, shared_from):
    vision, text = encoded
    slice_idx = torch.tensor([0, 0, 0, 1, 1, 1, 1])  # 3 and 4 prompts on the two slices, in any order
    prompt_idx = torch.tensor([2, 0, 3, 1, 2, 3, 0])
    scores, presence, masks, boxes = _reference(random_bundle.detector, vision, text, slice_idx, prompt_idx)
    heads = SharedHeads(random_bundle.detector, shared_from=shared_from)
    with torch.inference_mode():
        out = heads.run(heads.prepare(vision), slice_idx, text.embeds[prompt_idx], text.attention_mask[prompt_idx])
    torch.testing.assert_close(out.scores, scores, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.presence, presence, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.boxes, boxes, atol=1e-6, rtol=1e-5)
    scale = float(masks.abs().max())
    torch.testing.assert_close(out.mask_logits, masks, atol=1e-5 * scale, rtol=1e-4)


def test_top_k_masks_are_those_of_the_best_queries(random_bundle, encoded):
    vision, text = encoded
    slice_idx, prompt_idx = torch.tensor([0, 1, 1]), torch.tensor([1, 1, 3])
    heads = SharedHeads(random_bundle.detector)
    with torch.inference_mode():
        ctx = heads.prepare(vision)
        everything = heads.run(ctx, slice_idx, text.embeds[prompt_idx], text.attention_mask[prompt_idx])
        best = heads.run(ctx, slice_idx, text.embeds[prompt_idx], text.attention_mask[prompt_idx], top_k=2)
    assert best.mask_logits.shape[:2] == best.scores.shape == best.boxes.shape[:2] == (3, 2)
    torch.testing.assert_close(best.scores, everything.scores[:, :2])
    torch.testing.assert_close(best.mask_logits, everything.mask_logits[:, :2])
    torch.testing.assert_close(best.boxes, everything.boxes[:, :2])


@pytest.mark.parametrize("size", [(5, 7), (1, 1), (8, 8)])
def test_upsampled_conv_is_a_conv_of_the_nearest_upsampling(random_bundle, size):
    """The four 2×2 phase kernels add conv3x3(upsample2x(x)) exactly, borders included."""
    heads = SharedHeads(random_bundle.detector)
    conv = random_bundle.detector.mask_decoder.pixel_decoder.conv_layers[0]
    x = torch.randn(3, conv.in_channels, *size)
    base = torch.randn(3, conv.out_channels, 2 * size[0], 2 * size[1])
    with torch.inference_mode():
        expected = base + F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), conv.weight, padding=1)
        got = heads._add_upsampled_conv(0, x, base.clone())
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


def test_min_score_skips_the_mask_head_only_for_pairs_below_it(random_bundle, encoded):
    vision, text = encoded
    slice_idx, prompt_idx = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 3])
    heads = SharedHeads(random_bundle.detector)
    with torch.inference_mode():
        ctx = heads.prepare(vision)
        args = (ctx, slice_idx, text.embeds[prompt_idx], text.attention_mask[prompt_idx])
        everything = heads.run(*args)
        cut = float(everything.scores[:, 0].median())
        gated = heads.run(*args, min_score=cut)
    kept = everything.scores[:, 0] >= cut
    assert 0 < int(kept.sum()) < 4
    torch.testing.assert_close(gated.mask_logits[kept], everything.mask_logits[kept])
    assert (gated.mask_logits[~kept] == EMPTY_MASK_LOGIT).all()
    torch.testing.assert_close(gated.scores, everything.scores)
