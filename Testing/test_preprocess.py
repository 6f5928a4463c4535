"""Intensity windows, the letterbox and its exact inverse, model input tensors, and anatomical slicing."""

import numpy as np
import pytest
import torch

from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume
from medsam3_core.engine.preprocess import (
    CT_WINDOWS,
    IntensityNormalizer,
    Letterbox,
    slice_stack,
    to_model_input,
    unstack,
)

# -- intensity ---------------------------------------------------------------------------------------------------


def _ct(values, **metadata) -> Volume:
    return Volume(np.asarray(values, dtype=np.int16).reshape(1, 1, -1), modality="CT", metadata=metadata)


def test_ct_defaults_to_soft_tissue_window():
    vol = _ct([-1000, -160, 40, 240, 3000])
    norm = IntensityNormalizer.for_volume(vol)
    np.testing.assert_allclose(norm(vol.array).ravel(), [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    assert "soft-tissue" in norm.description


@pytest.mark.parametrize("name", sorted(CT_WINDOWS))
def test_every_preset_maps_its_centre_to_half(name):
    centre, width = CT_WINDOWS[name]
    norm = IntensityNormalizer.for_volume(_ct([0]), name)
    values = np.array([centre - width / 2, centre, centre + width / 2])
    np.testing.assert_allclose(norm(values), [0.0, 0.5, 1.0], atol=1e-6)


def test_window_precedence_override_then_dicom_then_modality():
    vol = _ct([0], window=(100.0, 200.0))
    dicom = IntensityNormalizer.for_volume(vol)
    assert (dicom.low, dicom.high) == (0.0, 200.0) and "DICOM" in dicom.description
    assert IntensityNormalizer.for_volume(vol, "lung").low == -600 - 750
    assert IntensityNormalizer.for_volume(vol, "-50, 100").low == -100.0
    assert IntensityNormalizer.for_volume(vol, (10, 20)).high == 20.0
    assert IntensityNormalizer.for_volume(vol, "auto").description == dicom.description


def test_dicom_window_forms_and_unusable_header_falls_back():
    multi = _ct([0], window=[(300.0, 600.0), (40.0, 400.0)])
    assert IntensityNormalizer.for_volume(multi).low == 0.0  # the first (default) window
    as_dict = _ct([0], window={"center": 50, "width": 100})
    assert IntensityNormalizer.for_volume(as_dict).high == 100.0
    broken = _ct([0], window=("abc", 0))
    assert "soft-tissue" in IntensityNormalizer.for_volume(broken).description


def test_mr_percentiles_are_computed_once_for_the_whole_volume():
    array = np.arange(2 * 10 * 100, dtype=np.float32).reshape(2, 10, 100)  # slice 1 is brighter than slice 0
    norm = IntensityNormalizer.for_volume(Volume(array, modality="MR"))
    low, high = np.percentile(array, [0.5, 99.5])
    assert (norm.low, norm.high) == pytest.approx((low, high))
    slice0, slice1 = norm(array[0]), norm(array[1])
    assert slice0.max() < 0.51 and slice1.min() > 0.49  # not stretched per slice
    assert slice0.dtype == np.float32 and slice0.min() == 0.0 and slice1.max() == 1.0


def test_nan_voxels_become_black_and_are_ignored_by_the_percentiles():
    array = np.linspace(0, 100, 101, dtype=np.float32).reshape(1, 1, 101)
    array[0, 0, :3] = np.nan
    norm = IntensityNormalizer.for_volume(Volume(array, modality="MR"))
    assert np.isfinite([norm.low, norm.high]).all()
    out = norm(array)
    assert np.isfinite(out).all() and not out[0, 0, :3].any()


def test_rgb_uint8_is_scaled_by_255_and_constant_image_maps_to_zero():
    rgb = Volume(np.full((1, 2, 2, 3), 51, dtype=np.uint8))
    np.testing.assert_allclose(IntensityNormalizer.for_volume(rgb)(rgb.array), 0.2, atol=1e-6)
    flat = Volume(np.full((1, 3, 3), 7.0))
    assert not IntensityNormalizer.for_volume(flat)(flat.array).any()


@pytest.mark.parametrize("window", ["liver", "40", "a,b", "40,0", (40, -5), "40,400,3"])
def test_bad_window_is_a_clear_input_error(window):
    with pytest.raises(InputError) as err:
        IntensityNormalizer.for_volume(_ct([0]), window)
    if window == "liver":
        assert all(name in str(err.value) for name in CT_WINDOWS)


# -- letterbox ---------------------------------------------------------------------------------------------------

SHAPES = [(37, 53, 112), (53, 37, 112), (5, 7, 112), (1, 9, 112), (111, 112, 112), (13, 13, 1008), (77, 100, 1008)]


@pytest.mark.parametrize("height,width,size", SHAPES)
def test_nearest_inverse_is_exact_on_masks(height, width, size):
    rng = np.random.default_rng(height * width)
    box = Letterbox(height, width, size)
    mask = rng.random((height, width)) > 0.5
    square = box.mask(mask)
    assert square.shape == (size, size) and square.dtype == bool
    assert not square[box.new_height :].any() and not square[:, box.new_width :].any()
    back = box.to_original(square)
    assert back.dtype == bool and np.array_equal(back, mask)
    labels = rng.integers(0, 6, (2, height, width)).astype(np.uint8)
    assert np.array_equal(box.to_original(box.mask(labels)), labels)


@pytest.mark.parametrize("height,width", [(37, 53), (53, 37), (1, 9)])
def test_stretch_mode_fills_the_square_and_inverts_exactly(height, width):
    box = Letterbox(height, width, 112, keep_aspect=False)
    assert (box.new_height, box.new_width) == (112, 112)
    mask = np.random.default_rng(height).random((height, width)) > 0.3
    assert box.mask(mask).mean() == pytest.approx(mask.mean(), abs=0.05)
    assert np.array_equal(box.to_original(box.mask(mask)), mask)
    np.testing.assert_allclose(box.box_to_original(np.array([0.0, 0.0, 1.0, 0.5])), [0, 0, width, height / 2])


def test_downscaled_mask_round_trip_keeps_the_shape():
    """Images larger than the model (a 300×500 photo into 112²) lose detail, but not position or size."""
    yy, xx = np.mgrid[:300, :500]
    disk = (yy - 140) ** 2 + (xx - 260) ** 2 < 80**2
    box = Letterbox(300, 500, 112)
    back = box.to_original(box.mask(disk))
    overlap = (back & disk).sum() / (back | disk).sum()
    assert overlap > 0.97 and abs(int(back.sum()) - int(disk.sum())) < 0.02 * disk.sum()


def test_letterbox_keeps_aspect_and_long_side():
    assert (Letterbox(50, 80, 112).new_height, Letterbox(50, 80, 112).new_width) == (70, 112)
    assert (Letterbox(80, 50, 112).new_height, Letterbox(80, 50, 112).new_width) == (112, 70)
    assert (Letterbox(2000, 10, 112).new_height, Letterbox(2000, 10, 112).new_width) == (112, 1)


def test_low_res_map_is_placed_with_sub_pixel_accuracy():
    """A linear ramp drawn on SAM3's 32² mask grid comes back as the same ramp on the 50×80 original grid."""
    box, side = Letterbox(50, 80, 112), 32
    centres = (np.arange(side) + 0.5) * (box.size / side)  # low-res pixel centres in square pixels
    y_orig = centres / (box.new_height / box.height) - 0.5  # … as original pixel coordinates
    x_orig = centres / (box.new_width / box.width) - 0.5
    ramp = (2.0 * y_orig[:, None] + 3.0 * x_orig[None, :]).astype(np.float32)
    back = box.to_original(ramp)
    assert back.shape == (50, 80) and back.dtype == np.float32
    expected = 2.0 * np.arange(50)[:, None] + 3.0 * np.arange(80)[None, :]
    # the first row/column and the last column (the image reaches the square's edge) sample the clamped border
    np.testing.assert_allclose(back[1:, 1:-1], expected[1:, 1:-1], atol=1e-3)


def test_image_resize_layouts_and_kinds():
    box = Letterbox(20, 30, 48)
    grey = box.image(np.ones((20, 30), dtype=np.float32))
    assert grey.shape == (48, 48)
    assert np.allclose(grey[: box.new_height, : box.new_width], 1.0) and not grey[box.new_height :].any()
    rgb = box.image(np.ones((2, 20, 30, 3), dtype=np.float32))
    assert rgb.shape == (2, 48, 48, 3)
    as_torch = box.image(torch.ones(20, 30))
    assert isinstance(as_torch, torch.Tensor) and as_torch.shape == (48, 48)
    with pytest.raises(ValueError):
        box.image(np.ones((30, 20)))


def test_box_to_original_maps_the_valid_region_to_the_image():
    box = Letterbox(50, 80, 112)
    corners = np.array([[0.0, 0.0, box.new_width / 112, box.new_height / 112], [0.5, 0.5, 2.0, 2.0]])
    np.testing.assert_allclose(box.box_to_original(corners), [[0, 0, 80, 50], [56 * 80 / 112, 56 * 50 / 70, 80, 50]])
    assert torch.allclose(box.box_to_original(torch.tensor(corners)), torch.tensor(box.box_to_original(corners)))


def test_model_input_range_channels_and_padding():
    box = Letterbox(10, 20, 32)
    grey = np.linspace(0, 1, 200, dtype=np.float32).reshape(1, 10, 20)
    pixels = to_model_input(np.concatenate([grey, grey]), box)
    assert pixels.shape == (2, 3, 32, 32) and pixels.dtype == torch.float32
    assert torch.equal(pixels[:, 0], pixels[:, 2]) and pixels.min() >= -1 and pixels.max() <= 1
    assert torch.all(pixels[:, :, box.new_height :] == -1)  # black padding
    rgba = to_model_input(np.ones((1, 10, 20, 4), dtype=np.float32), box, dtype=torch.bfloat16)
    assert rgba.shape == (1, 3, 32, 32) and rgba.dtype == torch.bfloat16 and rgba[0, :, 0, 0].eq(1).all()


# -- slicing -----------------------------------------------------------------------------------------------------


def test_slice_stack_follows_the_geometry_and_unstack_inverts_it():
    array = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    vol = Volume(array)  # identity direction: k = superior, j = posterior, i = left
    for name, axis in (("axial", 0), ("coronal", 1), ("sagittal", 2)):
        stack, found = slice_stack(vol, name)
        assert found == axis and stack.shape[0] == array.shape[axis]
        assert np.array_equal(unstack(stack, found), array)
    # a sagittal acquisition: i runs superior-inferior, so axial slices are cut across array axis 2
    sagittal = Volume(array, direction=np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]]))
    stack, axis = slice_stack(sagittal, "axial")
    assert axis == 2 and stack.shape == (6, 4, 5) and np.shares_memory(stack, array)
    # a single coronal image (rows run superior-inferior): its own one slice whatever axis is asked for
    xray = Volume(np.zeros((1, 30, 20)), direction=np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]]))
    assert xray.axis_for("axial") != 0 and slice_stack(xray, "axial")[0].shape == (1, 30, 20)
