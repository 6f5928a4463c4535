"""Volume reading/writing: geometry survives every format, 2D pictures, 4D frames and user-error messages."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from builders import mni152_files, oblique_direction
from PIL import Image

from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume
from medsam3_core.io.reading import format_of, read_volume, volume_from_sitk, volume_to_sitk, write_volume


def _oblique_volume(dtype=np.int16) -> Volume:
    rng = np.random.default_rng(1)
    array = rng.integers(-1000, 1500, size=(5, 7, 9)).astype(dtype)
    flipped = oblique_direction(17) @ np.diag([1.0, -1.0, 1.0])  # oblique and left-handed: a flipped axis
    return Volume(array, (0.7, 0.9, 3.0), (-12.5, 40.25, 101.0), flipped, "CT")


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_round_trip_keeps_array_and_geometry(tmp_path, suffix):
    vol = _oblique_volume()
    out = write_volume(vol, tmp_path / f"scan{suffix}")
    back = read_volume(out)
    assert back.array.dtype == np.int16
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, vol.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, vol.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, vol.direction, atol=1e-5)
    assert back.metadata["source"] == str(out)
    assert list(tmp_path.iterdir()) == [out]  # no temporary left beside it


def test_nifti_on_disk_is_ras_and_matches_nibabel(tmp_path):
    """ITK stores LPS internally and RAS in the NIfTI header; an independent reader must agree on every voxel."""
    vol = _oblique_volume()
    path = write_volume(vol, tmp_path / "scan.nii.gz")
    img = nib.load(path)
    ijk = np.array([[0, 0, 0], [8, 6, 4], [3, 2, 1]])
    ras_nib = nib.affines.apply_affine(img.affine, ijk)
    ras_ours = (vol.ijk_to_ras() @ np.c_[ijk, np.ones(3)].T).T[:, :3]
    np.testing.assert_allclose(ras_nib, ras_ours, atol=1e-3)
    # nibabel's array is [i, j, k]; ours is [k, j, i]
    np.testing.assert_array_equal(np.asarray(img.dataobj).transpose(2, 1, 0), vol.array)


def test_sitk_helpers_round_trip():
    vol = _oblique_volume(np.float32)
    image = volume_to_sitk(vol)
    assert image.GetSize() == (9, 7, 5)
    back = volume_from_sitk(image)
    assert back.same_geometry(vol, atol=1e-9)
    np.testing.assert_array_equal(back.array, vol.array)


def test_bool_labels_are_written_as_uint8(tmp_path):
    vol = _oblique_volume()
    labels = vol.with_array(vol.array > 0)
    back = read_volume(write_volume(labels, tmp_path / "mask.nrrd"))
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, vol.array > 0)


def test_png_grey_and_rgb(tmp_path):
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, size=(12, 20, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([rgb, np.full((12, 20), 255, np.uint8)])).save(tmp_path / "rgba.png")

    colour = read_volume(tmp_path / "photo.png")
    assert colour.array.shape == (1, 12, 20, 3) and colour.is_rgb and colour.modality == "RGB"
    np.testing.assert_array_equal(colour.array[0], rgb)
    rgba = read_volume(tmp_path / "rgba.png")
    np.testing.assert_array_equal(rgba.array[0], rgb)

    grey = read_volume(tmp_path / "grey.png")
    assert grey.array.shape == (1, 12, 20) and not grey.is_rgb and grey.modality is None
    assert grey.spacing == (1.0, 1.0, 1.0) and grey.origin == (0.0, 0.0, 0.0)
    np.testing.assert_array_equal(grey.array[0], rgb[..., 0])


def test_tiff_resolution_becomes_spacing(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "slide.tif", dpi=(254, 254))  # 0.1 mm pixels
    vol = read_volume(tmp_path / "slide.tif")
    np.testing.assert_allclose(vol.spacing[:2], (0.1, 0.1))


def test_jpeg_is_read(tmp_path):
    Image.fromarray(np.full((10, 16, 3), 128, np.uint8)).save(tmp_path / "endo.jpg")
    vol = read_volume(tmp_path / "endo.jpg")
    assert vol.array.shape == (1, 10, 16, 3)


def test_png_label_write_round_trip(tmp_path):
    labels = Volume(np.arange(30, dtype=np.uint8).reshape(1, 5, 6) % 4)
    back = read_volume(write_volume(labels, tmp_path / "labels.png"))
    np.testing.assert_array_equal(back.array, labels.array)
    with pytest.raises(InputError, match="one slice"):
        write_volume(_oblique_volume(np.uint8), tmp_path / "many.png")
    with pytest.raises(InputError, match="PNG stores"):
        write_volume(Volume(np.zeros((1, 3, 3), np.float32)), tmp_path / "float.png")


def _write_4d(path, frames=3):
    data = np.arange(frames * 4 * 5 * 6, dtype=np.float32).reshape(6, 5, 4, frames)  # nibabel order i, j, k, t
    affine = np.diag([2.0, 3.0, 4.0, 1.0])
    affine[:3, 3] = (10, 20, 30)
    nib.save(nib.Nifti1Image(data, affine), path)
    return data


def test_4d_requires_frame_and_frame_picks_it(tmp_path):
    path = tmp_path / "bold.nii.gz"
    data = _write_4d(path)
    with pytest.raises(InputError, match="--frame"):
        read_volume(path)
    vol = read_volume(path, frame=2)
    assert vol.shape == (4, 5, 6)
    np.testing.assert_array_equal(vol.array, data[..., 2].transpose(2, 1, 0))
    np.testing.assert_allclose(vol.spacing, (2, 3, 4))
    np.testing.assert_allclose(vol.origin, (-10, -20, 30))  # RAS (10, 20, 30) in LPS
    assert vol.metadata["frames"] == 3 and vol.metadata["frame"] == 2
    with pytest.raises(InputError, match="out of range"):
        read_volume(path, frame=3)


def test_modality_override(tmp_path):
    vol = read_volume(write_volume(_oblique_volume(), tmp_path / "x.mha"), modality="MR")
    assert vol.modality == "MR"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("broken.nii.gz", gzip.compress(b"not a nifti header at all" * 20), "damaged or not a valid NIfTI"),
        ("broken.nrrd", b"NRRD0004\ntype: nonsense\n\n", "damaged or not a valid NRRD"),
        ("notes.xyz", b"hello", "unknown file type"),
    ],
)
def test_corrupt_and_unknown_files(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        read_volume(tmp_path / name)
    assert "\n" not in str(err.value)


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match="Input not found"):
        read_volume(tmp_path / "nope.nii.gz")
    (tmp_path / "readme.txt").write_text("not dicom")
    with pytest.raises(InputError, match="No DICOM images found"):
        read_volume(tmp_path)


def test_write_errors(tmp_path):
    with pytest.raises(InputError, match="use one of"):
        write_volume(_oblique_volume(), tmp_path / "out.jpg")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises((InputError, OSError)):
        write_volume(_oblique_volume(), blocker / "sub" / "out.nii.gz")


def test_format_of():
    assert format_of("a/B.NII.GZ") == ".nii.gz"
    assert format_of("x.nii") == ".nii"
    assert format_of("x.gz") is None


def test_mni152_geometry(tmp_path):
    """A real scan shipped with nilearn: 1 mm MNI space, RAS affine diag(1,1,1) at (-98, -134, -72)."""
    t1_path, mask_path = mni152_files(tmp_path)
    t1, mask = read_volume(t1_path), read_volume(mask_path)
    assert t1.shape == (189, 233, 197)
    np.testing.assert_allclose(t1.spacing, (1, 1, 1))
    np.testing.assert_allclose(t1.direction, np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_allclose(t1.ijk_to_ras()[:3, 3], (-98, -134, -72))
    assert mask.same_geometry(t1)
    brain = mask.array > 0
    assert 1.0e6 < brain.sum() * t1.voxel_volume_ml * 1000 < 2.5e6  # 1–2.5 L of brain in mm³
    # the brain is brighter than the background outside the mask
    assert t1.array[brain].mean() > 3 * t1.array[~brain].mean()
    # MNI origin (0,0,0) lies inside the brain mask
    ras_to_ijk = np.linalg.inv(t1.ijk_to_ras())
    i, j, k = np.round(ras_to_ijk @ [0, 0, 0, 1])[:3].astype(int)
    assert brain[k, j, i]


def test_vector_nrrd_needs_frame(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((3, 4, 5, 2), np.float32), isVector=True)
    sitk.WriteImage(image, str(tmp_path / "dwi.nrrd"))
    with pytest.raises(InputError, match="--frame"):
        read_volume(tmp_path / "dwi.nrrd")
    assert read_volume(tmp_path / "dwi.nrrd", frame=1).shape == (3, 4, 5)


def test_folder_of_nifti_files_names_them(tmp_path):
    write_volume(_oblique_volume(), tmp_path / "scan.nii.gz")
    with pytest.raises(InputError, match="No DICOM images found .* holds scan.nii.gz: pass a file"):
        read_volume(tmp_path)


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".png"])
def test_rgb_round_trip(tmp_path, suffix):
    rgb = Volume(np.random.default_rng(3).integers(0, 256, size=(1, 6, 8, 3)).astype(np.uint8))
    back = read_volume(write_volume(rgb, tmp_path / f"photo{suffix}"))
    assert back.is_rgb and back.modality == "RGB"
    np.testing.assert_array_equal(back.array, rgb.array)
