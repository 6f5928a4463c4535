"""The batched detector: one ViT pass per slice, prompts cached, all (slice, prompt) pairs in one head call."""

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch

from medsam3_core.engine.detector import Detector
from medsam3_core.errors import InputError, PromptError
from medsam3_core.engine.preprocess import Letterbox, to_model_input

PROMPTS = ["liver", "left kidney", "spleen"]


@pytest.fixture(scope="module")
def pixels(random_bundle):
    slices = np.random.default_rng(1).random((2, 60, 90), dtype=np.float32)
    return to_model_input(slices, Letterbox(60, 90, random_bundle.image_size))


class _CallCounter:
    """Counts forward calls of a module through a hook (removed on exit)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls, self.batch = 0, []
        self._handle = module.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs, output) -> None:
        self.calls += 1
        first = next(t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor))
        self.batch.append(int(first.shape[0]))

    def __enter__(self) -> "_CallCounter":
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


@pytest.mark.parametrize("prompts", [PROMPTS[:1], PROMPTS])
def test_vision_encoder_runs_once_per_slice_batch(random_bundle, pixels, prompts):
    detector = Detector(random_bundle)
    with _CallCounter(random_bundle.detector.vision_encoder) as vit:
        vision = detector.encode_images(pixels)
        detections = detector.detect(vision, detector.encode_text(prompts))
    assert vit.calls == 1 and vit.batch == [2]
    q = random_bundle.detector.config.detr_decoder_config.num_queries
    low = 4 * random_bundle.image_size // 14
    assert detections.mask_logits.shape == (2, len(prompts), q, low, low)
    assert detections.scores.shape == (2, len(prompts), q) and detections.boxes.shape == (2, len(prompts), q, 4)
    assert detections.presence.shape == (2, len(prompts))
    for t in (detections.mask_logits, detections.scores, detections.presence, detections.boxes):
        assert t.device.type == "cpu" and t.dtype == torch.float32
    assert torch.all(detections.scores <= detections.presence[..., None] + 1e-6)  # score = logit-prob × presence


def test_batched_equals_per_prompt_and_full_forward(random_bundle, pixels):
    detector = Detector(random_bundle)
    vision = detector.encode_images(pixels)
    text = detector.encode_text(PROMPTS)
    batched = detector.detect(vision, text)
    assert not torch.allclose(batched.mask_logits[:, 0], batched.mask_logits[:, 1])  # prompts matter: a mix-up shows
    for p, prompt in enumerate(PROMPTS):
        single = detector.detect(vision, detector.encode_text([prompt]))
        torch.testing.assert_close(single.mask_logits[:, 0], batched.mask_logits[:, p], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(single.scores[:, 0], batched.scores[:, p], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(single.boxes[:, 0], batched.boxes[:, p], atol=1e-5, rtol=1e-4)
    with torch.inference_mode():
        full = random_bundle.detector(
            pixel_values=pixels[1:], input_ids=text.input_ids[2:], attention_mask=text.attention_mask[2:]
        )
    expected = full.pred_logits.sigmoid() * full.presence_logits.sigmoid()
    order = expected[0].argsort(descending=True)  # the detector orders queries best first
    torch.testing.assert_close(expected[0, order], batched.scores[1, 2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(full.pred_masks[0, order], batched.mask_logits[1, 2], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(full.pred_boxes[0, order], batched.boxes[1, 2], atol=1e-5, rtol=1e-4)


def test_chunked_heads_match_one_call(random_bundle, pixels):
    detector = Detector(random_bundle)
    vision, text = detector.encode_images(pixels), detector.encode_text(PROMPTS)
    whole = detector.detect(vision, text)
    chunked_detector = Detector(random_bundle, max_batch=4)  # 6 pairs → calls of 4 and 2
    with _CallCounter(random_bundle.detector.detr_decoder) as heads:
        chunked = chunked_detector.detect(vision, chunked_detector.encode_text(PROMPTS))
    assert heads.calls == 2
    torch.testing.assert_close(chunked.mask_logits, whole.mask_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(chunked.scores, whole.scores, atol=1e-5, rtol=1e-4)


def test_top_k_keeps_the_best_queries_in_order(random_bundle, pixels):
    detector = Detector(random_bundle)
    vision, text = detector.encode_images(pixels), detector.encode_text(PROMPTS[:2])
    everything = detector.detect(vision, text)
    best = Detector(random_bundle, top_k=3).detect(vision, text)
    assert best.mask_logits.shape[2] == best.scores.shape[2] == best.boxes.shape[2] == 3
    order = everything.scores.argsort(dim=2, descending=True)[..., :3]
    torch.testing.assert_close(best.scores, everything.scores.gather(2, order))
    b, p, q = 1, 1, int(order[1, 1, 2])
    torch.testing.assert_close(best.mask_logits[b, p, 2], everything.mask_logits[b, p, q])
    torch.testing.assert_close(best.boxes[b, p, 2], everything.boxes[b, p, q])
    torch.testing.assert_close(best.presence, everything.presence)


def test_text_is_encoded_once_per_distinct_prompt(random_bundle):
    detector = Detector(random_bundle)
    with _CallCounter(random_bundle.detector.text_encoder) as text_encoder:
        first = detector.encode_text(["liver", "spleen", "liver"])
        second = detector.encode_text([" spleen ", "kidney"])
    assert text_encoder.calls == 2 and text_encoder.batch == [2, 1]
    assert first.prompts == ("liver", "spleen", "liver") and second.prompts == ("spleen", "kidney")
    assert torch.equal(first.embeds[1], second.embeds[0]) and torch.equal(first.embeds[0], first.embeds[2])
    assert first.input_ids.shape == first.attention_mask.shape == (3, 32)


def test_bfloat16_model_still_returns_float32(random_bundle, pixels):
    bundle = replace(random_bundle, detector=copy.deepcopy(random_bundle.detector).to(torch.bfloat16))
    bundle = replace(bundle, dtype=torch.bfloat16)
    detector = Detector(bundle)
    detections = detector.detect(detector.encode_images(pixels[:1]), detector.encode_text(["liver"]))
    assert detections.mask_logits.dtype == torch.float32 and torch.isfinite(detections.mask_logits).all()


@pytest.mark.parametrize("prompts", [[], ["  "], ["liver", ""]])
def test_empty_prompts_are_prompt_errors(random_bundle, prompts):
    with pytest.raises(PromptError):
        Detector(random_bundle).encode_text(prompts)


def test_wrong_image_size_is_an_input_error(random_bundle):
    with pytest.raises(InputError, match="112"):
        Detector(random_bundle).encode_images(torch.zeros(1, 3, 64, 64))


def test_geometry_cls_token_changes_the_prompt_as_meta_does(random_bundle):
    """With ``geometry_cls`` the detector reads one more prompt token (Meta's layout), and the result differs."""
    import dataclasses

    from medsam3_core.engine.detector import Detector

    pixels = torch.randn(1, 3, random_bundle.image_size, random_bundle.image_size)
    plain = Detector(random_bundle)
    with_cls = Detector(dataclasses.replace(random_bundle, geometry_cls=True))
    a = plain.detect(plain.encode_images(pixels), plain.encode_text(["liver"]))
    b = with_cls.detect(with_cls.encode_images(pixels), with_cls.encode_text(["liver"]))
    assert a.scores.shape == b.scores.shape
    assert not torch.allclose(a.scores, b.scores)


def test_letterbox_follows_the_models_resize_convention(random_bundle):
    import dataclasses

    from medsam3_core.engine.detector import Detector

    ours = Detector(random_bundle).letterbox(50, 100)
    meta = Detector(dataclasses.replace(random_bundle, keep_aspect=False)).letterbox(50, 100)
    assert (ours.new_height, ours.new_width) == (56, 112)
    assert (meta.new_height, meta.new_width) == (112, 112)


def test_geometry_cls_once_per_slice_equals_the_token_per_pair(random_bundle):
    """The CLS token is computed once per slice and shared by its prompts; that must equal computing it per pair."""
    import dataclasses

    from medsam3_core.engine.detector import Detector
    from medsam3_core.model.bundle import append_geometry_cls
    from transformers.modeling_outputs import BaseModelOutputWithPooling
    from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

    bundle = dataclasses.replace(random_bundle, geometry_cls=True)
    det = Detector(bundle)
    pixels = torch.randn(2, 3, bundle.image_size, bundle.image_size)
    vision, text = det.encode_images(pixels), det.encode_text(["liver", "kidney", "spleen"])
    batched = det.detect(vision, text)
    with torch.inference_mode():
        for b in range(2):
            for p in range(3):
                one = Sam3VisionEncoderOutput(
                    fpn_hidden_states=tuple(t[b : b + 1] for t in vision.fpn_hidden_states),
                    fpn_position_encoding=tuple(t[b : b + 1] for t in vision.fpn_position_encoding),
                )
                words = BaseModelOutputWithPooling(pooler_output=text.embeds[p : p + 1])
                words, mask = append_geometry_cls(bundle.detector, one, words, text.attention_mask[p : p + 1])
                out = bundle.detector(vision_embeds=one, text_embeds=words, attention_mask=mask)
                score = out.pred_logits.sigmoid() * out.presence_logits.sigmoid()
                torch.testing.assert_close(batched.scores[b, p], score[0].sort(descending=True).values,
                                           atol=1e-5, rtol=1e-4)
