"""Overlay pictures, display orientation and the shared colour table."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medsam3_core.io.colors import hex_color, label_colormap, segment_color
from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume
from medsam3_core.io.overlay import blend, representative_slices, segment_caption, write_overlays
from medsam3_core.segmenter import SegmentInfo
from medsam3_core.io.planes import plane_for


def _phantom(lps: np.ndarray) -> np.ndarray:
    """An asymmetric test object at LPS points (…, 3): a 'liver' ball on the patient's right, anterior and high,
    a 'kidney' ball on the left, posterior and low, in a body ellipse."""
    x, y, z = lps[..., 0], lps[..., 1], lps[..., 2]
    out = np.zeros(x.shape, np.int16)
    out[(x / 28) ** 2 + (y / 22) ** 2 < 1] = 1
    out[((x + 12) / 9) ** 2 + ((y + 6) / 8) ** 2 + ((z - 8) / 9) ** 2 < 1] = 2
    out[((x - 14) / 5) ** 2 + ((y - 10) / 5) ** 2 + ((z + 6) / 7) ** 2 < 1] = 3
    return out


def _sampled(direction: np.ndarray, shape=(20, 24, 28), spacing=(2.0, 2.0, 2.0)) -> Volume:
    """Sample the phantom on a grid with the given direction, centred on the LPS origin."""
    direction = np.asarray(direction, float)
    half = (np.array(shape[::-1]) - 1) / 2 * np.array(spacing)
    origin = -direction @ half
    vol = Volume(np.zeros(shape, np.int16), spacing, tuple(origin), direction, "CT")
    k, j, i = np.indices(shape)
    ijk = np.stack([i, j, k], -1).reshape(-1, 3)
    return vol.with_array(_phantom(vol.physical_points(ijk)).reshape(shape))


# LPS columns for i, j, k: identity; an RAS-stored scan (i→right, j→anterior); a sagittal acquisition (i→posterior,
# j→inferior, k→left) — the same physical object must look the same in every view.
DIRECTIONS = {
    "identity": np.eye(3),
    "ras_stored": np.diag([-1.0, -1.0, 1.0]),
    "sagittal_acq": np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], float),
}


@pytest.mark.parametrize("name", ["ras_stored", "sagittal_acq"])
@pytest.mark.parametrize("view", ["axial", "coronal", "sagittal"])
def test_views_do_not_depend_on_the_array_layout(name, view):
    shape = (20, 20, 20)
    ref = _sampled(DIRECTIONS["identity"], shape)
    other = _sampled(DIRECTIONS[name], shape)
    p_ref, p_other = plane_for(ref, view), plane_for(other, view)
    normal = {"axial": 2, "coronal": 1, "sagittal": 0}[view]

    def position(vol: Volume, axis: int, index: int) -> float:  # LPS coordinate of a slice along the view normal
        kji = [0, 0, 0]
        kji[axis] = index
        return float(vol.physical_points([kji[::-1]])[0, normal])

    for index in (6, 10, 13):
        target = position(ref, p_ref.axis, index)
        match = [m for m in range(p_other.count) if abs(position(other, p_other.axis, m) - target) < 1e-6]
        assert len(match) == 1
        np.testing.assert_array_equal(p_ref.extract(ref.array, index), p_other.extract(other.array, match[0]))


def test_axial_view_is_radiological():
    vol = _sampled(DIRECTIONS["identity"])
    plane = plane_for(vol, "axial")
    image = plane.extract(vol.array, 14)  # z = +8 mm: the 'liver' ball (patient's right, anterior) is here
    rows, cols = np.nonzero(image == 2)
    assert cols.mean() < image.shape[1] / 2, "patient's right must be on the left of the screen"
    assert rows.mean() < image.shape[0] / 2, "anterior must be up"
    coronal = plane_for(vol, "coronal")
    assert coronal.flip_rows and not coronal.flip_cols, "superior up: LPS z is flipped on screen"


def test_anisotropic_spacing_sets_the_aspect():
    vol = Volume(np.zeros((5, 6, 7)), spacing=(0.5, 0.5, 3.0))
    assert plane_for(vol, "axial").aspect == 1.0
    coronal = plane_for(vol, "coronal")
    assert (coronal.row_spacing, coronal.col_spacing, coronal.count) == (3.0, 0.5, 6)
    assert plane_for(vol, "coronal").extract(vol.array, 0).shape == (5, 7)


def test_representative_slices_cover_every_segment():
    vol = _sampled(DIRECTIONS["identity"])
    labels = (vol.array >= 2) * (vol.array - 1)  # 1 liver ball, 2 kidney ball
    plane = plane_for(vol, "axial")
    chosen = representative_slices(plane, labels, n=3)
    assert len(chosen) == 3 and chosen == sorted(chosen)
    for k in (1, 2):
        assert int(np.argmax(plane.slice_profile(labels == k))) in chosen
    assert all(plane.slice_profile(labels)[c] > 0 for c in chosen)
    empty = representative_slices(plane, np.zeros_like(labels), n=4)
    assert len(empty) == 4 and 0 < min(empty) and max(empty) < plane.count - 1
    largest_first = [int(np.argmax(plane.slice_profile(labels == 1)))]  # label 1 is the bigger ball
    assert representative_slices(plane, labels, n=1) == largest_first
    with pytest.raises(InputError):
        representative_slices(plane, labels, n=0)


def test_colour_table_is_stable_distinct_and_shared():
    colours = [segment_color(k) for k in range(1, 41)]
    assert len(set(colours)) == 40
    assert segment_color(1) == (230, 80, 60) and hex_color(1) == "#e6503c"
    lut = label_colormap(3, alpha=200)
    assert lut.shape == (4, 4) and tuple(lut[0]) == (0, 0, 0, 0) and tuple(lut[2]) == (*segment_color(2), 200)
    with pytest.raises(ValueError):
        segment_color(0)


def test_blend_colours_only_labelled_pixels():
    grey = np.full((4, 5), 0.5, np.float32)
    labels = np.zeros((4, 5), np.int64)
    labels[1, 2] = 2
    out = blend(grey, labels, 2, opacity=1.0)
    assert out.dtype == np.uint8 and out.shape == (4, 5, 3)
    assert tuple(out[1, 2]) == segment_color(2)
    assert tuple(out[0, 0]) == (128, 128, 128)


def _segments(labels: np.ndarray, vol: Volume) -> list[SegmentInfo]:
    out = []
    for k, (prompt, concept) in enumerate([("Liver", "liver"), ("renal", "kidney")], start=1):
        n = int((labels == k).sum())
        out.append(SegmentInfo(prompt, concept, k, n, n * vol.voxel_volume_ml, 0.8, None))
    return out


def test_write_overlays_pngs(tmp_path):
    ct_labels = _sampled(DIRECTIONS["sagittal_acq"])
    ct = ct_labels.with_array(np.choose(ct_labels.array, [-1000, 40, 60, 150]).astype(np.int16))
    labels = ct_labels.with_array(((ct_labels.array >= 2) * (ct_labels.array - 1)).astype(np.uint8))
    segments = _segments(labels.array, ct)
    paths = write_overlays(ct, labels, segments, tmp_path / "png", n=3)
    assert len(paths) == 3 and all(p.parent == tmp_path / "png" for p in paths)
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted(p.name for p in paths)
    liver_rgb = np.array(segment_color(1))
    hits = 0
    for path in paths:
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(int)
        assert pixels.shape[0] > 200 and pixels.shape[1] > 200
        above_legend = pixels[: int(pixels.shape[0] * 0.8)]
        near = np.abs(above_legend - liver_rgb).sum(-1) < 60  # the outline is drawn in the pure segment colour
        if near.any():
            hits += 1
            _, cols = np.nonzero(near)
            assert cols.mean() < pixels.shape[1] / 2, "the patient's right (liver) is drawn on the left"
    assert hits >= 1
    assert "renal → kidney" in segment_caption(segments[1]) and segment_caption(segments[0]).startswith("Liver →")


def test_write_overlays_refuses_a_label_map_on_another_grid(tmp_path):
    ct = Volume(np.zeros((4, 8, 8), np.int16), modality="CT")
    labels = Volume(np.zeros((4, 8, 8), np.uint8), spacing=(2, 2, 2))
    with pytest.raises(InputError, match="grid"):
        write_overlays(ct, labels, [], tmp_path)


def test_cli_png_option_writes_pictures(tmp_path):
    from medsam3_core.io.reading import write_volume
    from medsam3_core.cli.infer import main

    ct = _sampled(DIRECTIONS["ras_stored"], shape=(4, 40, 48))
    write_volume(ct.with_array(np.choose(ct.array, [-1000, 40, 60, 150]).astype(np.int16)), tmp_path / "ct.nii.gz")
    code = main(["infer", str(tmp_path / "ct.nii.gz"), "liver", "kidney", "-o", str(tmp_path / "out"), "--device",
                 "cpu", "--mode", "detect", "--modality", "CT", "--progress", "none", "--quiet", "--png",
                 str(tmp_path / "png")])
    assert code == 0
    pictures = sorted((tmp_path / "png").glob("axial_*.png"))
    assert 1 <= len(pictures) <= 5
    assert all(Image.open(p).size[0] > 200 for p in pictures)


def test_planar_captions_use_pixels():
    seg = SegmentInfo("polyp", "polyp", 1, 321, 0.321, 0.75, (0, 0))
    assert segment_caption(seg, planar=True) == "polyp: 321 px, score 0.75"
    assert segment_caption(seg) == "polyp: 0.3 mL, score 0.75"
