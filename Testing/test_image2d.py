"""2D text-prompted segmentation: one image encoding for all prompts, consistent outputs, clear errors."""

import numpy as np
import pytest
import torch

from medsam3_core.errors import InputError, PromptError
from medsam3_core.io.geometry import Volume
from medsam3_core.engine.image2d import segment_image

PROMPTS = ["optic disc", "vessel", "macula"]


def test_grey_image_three_prompts_one_encoding(random_bundle):
    image = np.random.default_rng(2).normal(100, 20, (45, 70)).astype(np.float32)
    calls = []
    handle = random_bundle.detector.vision_encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        result = segment_image(random_bundle, image, PROMPTS, threshold=0.0)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert list(result.instances) == PROMPTS and list(result.top) == PROMPTS
    assert result.labelmap.shape == result.confidence.shape == (45, 70) and result.labelmap.dtype == np.uint8
    assert "percentiles" in result.normalization
    assert all(top is not None for top in result.top.values()) and result.labelmap.any()  # threshold 0 keeps all
    for k, prompt in enumerate(PROMPTS, start=1):
        found, top = result.instances[prompt], result.top[prompt]
        assert top is (found[0] if found else None)
        assert all(a.score >= b.score for a, b in zip(found, found[1:]))
        if top is not None:
            assert top.mask.shape == (45, 70)
            assert not (result.labelmap == k)[~top.mask].any()  # a label only where its top mask is
    assert np.all((result.confidence > 0) == (result.labelmap > 0))


def test_high_threshold_finds_nothing(random_bundle):
    result = segment_image(random_bundle, np.zeros((20, 30, 3), np.uint8), ["lesion"], threshold=1.0)
    assert result.top == {"lesion": None} and not result.labelmap.any() and "1/255" in result.normalization


def test_rgba_and_single_slice_volume_with_dicom_window(random_bundle):
    rgba = np.random.default_rng(3).integers(0, 255, (1, 16, 24, 4), dtype=np.uint8)
    assert segment_image(random_bundle, Volume(rgba), ["polyp"]).labelmap.shape == (16, 24)
    ct = Volume(np.zeros((1, 16, 24), np.int16), modality="CT", metadata={"window": (50.0, 350.0)})
    assert "DICOM" in segment_image(random_bundle, ct, ["nodule"]).normalization


def test_same_input_same_answer(random_bundle):
    image = np.random.default_rng(4).random((30, 30))
    first = segment_image(random_bundle, image, PROMPTS[:2], threshold=0.0)
    second = segment_image(random_bundle, image, PROMPTS[:2], threshold=0.0)
    assert np.array_equal(first.labelmap, second.labelmap)
    assert torch.allclose(torch.from_numpy(first.confidence), torch.from_numpy(second.confidence))


@pytest.mark.parametrize(
    "image,prompts,error",
    [
        (np.zeros((3, 8, 8)), ["liver"], InputError),  # a volume, not an image
        (np.zeros((8,)), ["liver"], InputError),
        (np.zeros((8, 8)), [], PromptError),
        (np.zeros((8, 8)), ["liver", " "], PromptError),
        (np.zeros((8, 8)), ["liver", "liver "], PromptError),
    ],
)
def test_clear_errors(random_bundle, image, prompts, error):
    with pytest.raises(error):
        segment_image(random_bundle, image, prompts)


def test_multi_slice_volume_and_bad_window_are_input_errors(random_bundle):
    with pytest.raises(InputError, match="volume engine"):
        segment_image(random_bundle, Volume(np.zeros((2, 8, 8))), ["liver"])
    with pytest.raises(InputError, match="soft-tissue"):
        segment_image(random_bundle, np.zeros((8, 8)), ["liver"], window="abdomen")
