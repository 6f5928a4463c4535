"""DICOM series: spatial sorting, rescale, oblique geometry, series choice, gaps, frames and junk in the folder."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from builders import (
    oblique_direction,
    write_dicom_image,
    write_dicom_series,
    write_enhanced_dicom,
    write_phantom_dicom,
)

from medsam3_core.io.dicom import list_series, read_dicom_series
from medsam3_core.errors import Cancelled, InputError
from medsam3_core.io.reading import read_volume
from medsam3_core.progress import CancelToken

SPACING = (0.75, 0.6, 2.5)
ORIGIN = (-120.0, 35.5, 410.0)


def _hu(shape=(6, 10, 12), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 2000, size=shape).astype(np.int16)


def test_shuffled_names_sorted_by_position_and_rescaled(tmp_path):
    hu = _hu()
    paths = write_dicom_series(tmp_path, hu, SPACING, ORIGIN, slope=1, intercept=-1024, shuffle_names=True)
    assert [p.name for p in paths] != sorted(p.name for p in paths)  # the builder really shuffles
    vol = read_volume(tmp_path)
    assert vol.array.dtype == np.int16 and vol.modality == "CT"
    np.testing.assert_array_equal(vol.array, hu)
    np.testing.assert_allclose(vol.spacing, SPACING, atol=1e-5)
    np.testing.assert_allclose(vol.origin, ORIGIN, atol=1e-5)
    assert vol.metadata["dicom_files"] == [str(p) for p in paths]  # slice order
    stored = pydicom.dcmread(paths[0]).pixel_array
    assert stored.min() >= 0  # the file really holds shifted values, so the intercept had to be applied


def test_fractional_slope_gives_float(tmp_path):
    values = np.round(_hu(seed=3) / 2) * 0.5  # representable with slope 0.5
    write_dicom_series(tmp_path, values, SPACING, ORIGIN, slope=0.5, intercept=-100, modality="MR")
    vol = read_volume(tmp_path)
    assert vol.array.dtype == np.float32 and vol.modality == "MR"
    np.testing.assert_allclose(vol.array, values)


def test_oblique_series_physical_points_match_positions(tmp_path):
    direction = oblique_direction(25)
    hu = _hu((5, 8, 9))
    paths = write_dicom_series(tmp_path, hu, SPACING, ORIGIN, direction, window=(50, 350))
    vol = read_volume(tmp_path)
    np.testing.assert_allclose(vol.direction, direction, atol=1e-6)
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose(vol.physical_points([[0, 0, k]])[0], ipp, atol=1e-4)
        # one column step moves along the row direction cosines by the column spacing
        row_cos = np.array([float(v) for v in ds.ImageOrientationPatient[:3]])
        step = vol.physical_points([[1, 0, k]])[0] - ipp
        np.testing.assert_allclose(step, row_cos * float(ds.PixelSpacing[1]), atol=1e-5)
    assert vol.metadata["window"] == (50.0, 350.0)


def test_reversed_stack_direction(tmp_path):
    """Slices written head-to-feet (k along -z): sorting by position keeps the physical layout right."""
    direction = np.diag([1.0, 1.0, -1.0])
    hu = _hu((4, 6, 7))
    write_dicom_series(tmp_path, hu, SPACING, ORIGIN, direction)
    vol = read_volume(tmp_path)
    # the volume is right-handed along i x j; each physical point must hold the value written there
    for k in range(4):
        physical = np.asarray(ORIGIN) + k * SPACING[2] * direction[:, 2]
        ijk = np.linalg.solve(vol.ijk_to_lps()[:3, :3], physical - vol.origin)
        kk = int(round(ijk[2]))
        np.testing.assert_array_equal(vol.array[kk], hu[k])


def test_two_series_choice_and_unknown_uid(tmp_path):
    big = write_dicom_series(tmp_path, _hu((6, 8, 8)), SPACING, ORIGIN, description="Big")
    small = write_dicom_series(tmp_path / "sub", _hu((3, 8, 8), 1), SPACING, ORIGIN, description="Small")
    big_uid = str(pydicom.dcmread(big[0]).SeriesInstanceUID)
    small_uid = str(pydicom.dcmread(small[0]).SeriesInstanceUID)

    series = list_series(tmp_path)
    assert [(s.uid, s.images, s.description) for s in series] == [(big_uid, 6, "Big"), (small_uid, 3, "Small")]
    assert read_volume(tmp_path).shape[0] == 6
    chosen = read_volume(tmp_path, series_uid=small_uid)
    assert chosen.shape[0] == 3 and chosen.metadata["series_uid"] == small_uid
    assert chosen.metadata["series_count"] == 2
    with pytest.raises(InputError, match="Available: .*Big.*6 images.*Small.*3 images"):
        read_volume(tmp_path, series_uid="1.2.3.4")


def test_single_file_loads_its_series(tmp_path):
    paths = write_dicom_series(tmp_path, _hu((4, 6, 6)), SPACING, ORIGIN)
    vol = read_volume(paths[2])
    assert vol.shape == (4, 6, 6) and vol.metadata["source"] == str(paths[2])


def test_gap_is_reported(tmp_path):
    write_dicom_series(tmp_path, _hu((7, 6, 6)), SPACING, ORIGIN, gap_at=4)
    vol = read_volume(tmp_path)
    assert vol.metadata["slice_gaps"] == [
        {"between_slices": [3, 4], "distance_mm": 5.0, "expected_mm": 2.5}
    ]
    assert "Irregular slice spacing" in vol.metadata["warnings"][0]
    np.testing.assert_allclose(vol.spacing[2], 2.5)


def test_regular_series_has_no_warnings(tmp_path):
    write_dicom_series(tmp_path, _hu((4, 6, 6)), SPACING, ORIGIN)
    vol = read_volume(tmp_path)
    assert vol.metadata["slice_gaps"] == [] and vol.metadata["warnings"] == []
    assert "window" not in vol.metadata


def test_non_dicom_files_and_localiser_are_ignored(tmp_path):
    hu = _hu((5, 8, 8))
    write_dicom_series(tmp_path, hu, SPACING, ORIGIN)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "DICOMDIR.bak").write_bytes(b"\0" * 300)
    # a localiser in the same series: same UID, another orientation and size
    uid = str(pydicom.dcmread(next(tmp_path.glob("*.dcm"))).SeriesInstanceUID)
    coronal = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])
    write_dicom_series(tmp_path / "loc", _hu((1, 5, 5)), SPACING, ORIGIN, coronal, series_uid=uid)
    vol = read_volume(tmp_path)
    np.testing.assert_array_equal(vol.array, hu)
    assert any("localiser" in w for w in vol.metadata["warnings"])


def test_time_points_need_frame(tmp_path):
    uid = "1.2.826.0.1.3680043.8.498.1"
    first, second = _hu((3, 5, 5), 1), _hu((3, 5, 5), 2)
    a = write_dicom_series(tmp_path / "t0", first, SPACING, ORIGIN, series_uid=uid)
    b = write_dicom_series(tmp_path / "t1", second, SPACING, ORIGIN, series_uid=uid)
    for paths, number in ((a, 1), (b, 2)):
        for path in paths:
            ds = pydicom.dcmread(path)
            ds.TemporalPositionIdentifier = number
            ds.save_as(path)
    with pytest.raises(InputError, match="--frame N \\(0..1\\)"):
        read_volume(tmp_path)
    np.testing.assert_array_equal(read_volume(tmp_path, frame=1).array, second)
    np.testing.assert_array_equal(read_volume(tmp_path, frame=0).array, first)


def test_cancel_while_reading(tmp_path):
    write_dicom_series(tmp_path, _hu((3, 4, 4)), SPACING, ORIGIN)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        read_dicom_series(tmp_path, cancel=token)


def test_progress_reaches_one(tmp_path):
    write_dicom_series(tmp_path, _hu((3, 4, 4)), SPACING, ORIGIN)
    seen = []
    read_volume(tmp_path, progress=lambda stage, f: seen.append((stage, f)))
    assert seen[-1] == ("load", 1.0) and {stage for stage, _ in seen} == {"load"}
    assert [f for _, f in seen] == sorted(f for _, f in seen)


def test_enhanced_multiframe_file(tmp_path):
    direction = oblique_direction(10)
    hu = _hu((5, 6, 7))
    path = write_enhanced_dicom(tmp_path / "enhanced.dcm", hu, SPACING, ORIGIN, direction, slope=2, intercept=-1024)
    vol = read_volume(tmp_path)
    np.testing.assert_array_equal(vol.array, np.round((hu + 1024) / 2) * 2 - 1024)
    np.testing.assert_allclose(vol.direction, direction, atol=1e-6)
    np.testing.assert_allclose(vol.origin, ORIGIN, atol=1e-5)
    np.testing.assert_allclose(vol.spacing, SPACING, atol=1e-5)
    assert vol.metadata["dicom_files"] == [str(path)]


def test_projection_radiograph_and_colour_capture(tmp_path):
    grey = np.random.default_rng(4).integers(0, 4096, size=(9, 11)).astype(np.uint16)
    dx = read_volume(write_dicom_image(tmp_path / "dx" / "chest.dcm", grey, imager_spacing=0.143))
    assert dx.shape == (1, 9, 11) and dx.modality == "DX"
    np.testing.assert_array_equal(dx.array[0], grey)
    np.testing.assert_allclose(dx.spacing[:2], (0.143, 0.143))

    rgb = np.random.default_rng(5).integers(0, 256, size=(9, 11, 3)).astype(np.uint8)
    capture = read_volume(write_dicom_image(tmp_path / "sc" / "photo.dcm", rgb, modality="XC"))
    assert capture.is_rgb and capture.modality == "RGB" and capture.metadata["modality"] == "XC"
    np.testing.assert_array_equal(capture.array[0], rgb)


def test_gantry_tilt_is_reported(tmp_path):
    tilt = np.deg2rad(15)
    sheared = np.array([[1.0, 0, 0], [0, 1, np.sin(tilt)], [0, 0, np.cos(tilt)]])  # slices step along a tilted axis
    write_dicom_series(tmp_path, _hu((4, 6, 6)), SPACING, ORIGIN, sheared)
    vol = read_volume(tmp_path)
    assert any("gantry tilt" in w for w in vol.metadata["warnings"])
    np.testing.assert_allclose(vol.direction, np.eye(3), atol=1e-6)


def test_monochrome1_is_inverted(tmp_path):
    grey = np.array([[0, 100], [1000, 4000]], np.uint16)
    path = write_dicom_image(tmp_path / "cr.dcm", grey, modality="CR")
    ds = pydicom.dcmread(path)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.WindowCenter, ds.WindowWidth = "1000", "2000"
    ds.save_as(path)
    vol = read_volume(path)
    np.testing.assert_array_equal(vol.array[0], 4000 - grey)
    assert vol.metadata["window"] == (3000.0, 2000.0)
    assert any("MONOCHROME1" in w for w in vol.metadata["warnings"])


def test_jpeg_lossless_falls_back_to_gdcm_without_double_rescale(tmp_path):
    """pydicom alone cannot decode JPEG Lossless; SimpleITK's GDCM reader does and already applies the rescale."""
    import SimpleITK as sitk

    hu = _hu((1, 16, 20))
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.5, 0.6, 2.0))
    image.SetOrigin((1.0, 2.0, 3.0))
    for tag, value in (("0028|1052", "-1024"), ("0028|1053", "1"), ("0008|0060", "CT")):
        image.SetMetaData(tag, value)
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetFileName(str(tmp_path / "jpegll.dcm"))
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG")
    writer.Execute(image)
    ds = pydicom.dcmread(tmp_path / "jpegll.dcm")
    assert "Lossless" in ds.file_meta.TransferSyntaxUID.name and float(ds.RescaleIntercept) == -1024
    vol = read_volume(tmp_path / "jpegll.dcm")
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, hu)
    np.testing.assert_allclose(vol.spacing[:2], (0.5, 0.6))
    np.testing.assert_allclose(vol.origin, (1.0, 2.0, 3.0))


def test_dicom_and_nifti_of_the_same_scan_agree(tmp_path):
    """The phantom written as an oblique DICOM series and as NIfTI reads back on one grid with equal voxels."""
    from medsam3_core.io.reading import write_volume

    _, ct, _, _ = write_phantom_dicom(tmp_path / "dicom", direction=oblique_direction(30))
    from_dicom = read_volume(tmp_path / "dicom")
    from_nifti = read_volume(write_volume(ct, tmp_path / "ct.nii.gz"))
    assert from_dicom.same_geometry(from_nifti, atol=1e-4) and from_dicom.same_geometry(ct, atol=1e-4)
    np.testing.assert_array_equal(from_dicom.array, from_nifti.array)
    assert from_dicom.metadata["window"] == (40.0, 400.0)


def test_segmentation_objects_in_the_folder_are_not_images(tmp_path):
    """A DICOM SEG saved next to its CT (many frames, own series) must not be picked as the largest series."""
    hu = _hu((3, 6, 6))
    write_dicom_series(tmp_path, hu, SPACING, ORIGIN)
    seg = pydicom.dcmread(write_dicom_image(tmp_path / "seg" / "seg.dcm", np.zeros((6, 6), np.uint16)))
    seg.SOPClassUID = seg.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    seg.NumberOfFrames = 50
    seg.save_as(tmp_path / "seg" / "seg.dcm")
    assert [s.images for s in list_series(tmp_path)] == [3]
    np.testing.assert_array_equal(read_volume(tmp_path).array, hu)
