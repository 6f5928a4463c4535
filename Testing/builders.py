"""Test-data builders shared by the test suites (``from builders import ...``).

They write *real* files (valid DICOM CT/MR series with every geometry tag, NIfTI copies of nilearn's MNI152 template)
so tests exercise the same readers users do, with geometry the test knows exactly.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = [
    "write_dicom_series",
    "write_enhanced_dicom",
    "write_dicom_image",
    "write_phantom_dicom",
    "mni152_files",
    "write_nnunet_dataset",
    "oblique_direction",
    "SOP_CLASSES",
]

SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
}
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def oblique_direction(deg: float) -> np.ndarray:
    """A proper rotation (columns = i, j, k axes in LPS): ``deg`` about z, then ``deg / 2`` about x.

    Two rotation axes make every column oblique, which catches readers that swap or drop an axis.
    """
    a, b = np.deg2rad(deg), np.deg2rad(deg / 2)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rx @ rz


def write_dicom_series(
    folder: Union[str, Path],
    array_kji: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Optional[np.ndarray] = None,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    modality: str = "CT",
    shuffle_names: bool = True,
    series_uid: Optional[str] = None,
    study_uid: Optional[str] = None,
    gap_at: Optional[int] = None,
    window: Optional[tuple[float, float]] = None,
    description: str = "Synthetic series",
) -> list[Path]:
    """Write ``array_kji`` as one single-frame DICOM file per slice and return the paths in slice order.

    ``array_kji`` holds the values a reader must return (e.g. HU): each file stores ``(value - intercept) / slope``
    (rounded) with the given RescaleSlope/Intercept. Slice ``k`` lies at ``origin + k·dk·direction[:, 2]``; with
    ``gap_at=g`` slices ``g, g+1, …`` move one extra ``dk`` further, as if a file were missing. With
    ``shuffle_names`` the file names do not follow slice order, so readers must sort by position.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    array_kji = np.asarray(array_kji)
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    di, dj, dk = (float(s) for s in spacing)
    stored = np.round((array_kji.astype(np.float64) - intercept) / slope)
    signed = bool(stored.min() < 0)
    stored = stored.astype(np.int16 if signed else np.uint16)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    sop_class = SOP_CLASSES.get(modality, _SECONDARY_CAPTURE)
    count = len(array_kji)
    names = np.random.default_rng(count).permutation(count) if shuffle_names else range(count)
    now = datetime.datetime(2024, 1, 2, 3, 4, 5)
    paths = []
    for k, plane in enumerate(stored):
        offset = k + (1 if gap_at is not None and k >= gap_at else 0)
        position = np.asarray(origin, dtype=float) + offset * dk * direction[:, 2]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Test", "PHANTOM1", "19700101", "O"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "A1", ""
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = 1, k + 1, description
        ds.Modality, ds.Manufacturer, ds.PositionReferenceIndicator = modality, "medsam3-tests", ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in np.r_[direction[:, 0], direction[:, 1]]]
        ds.PixelSpacing = [f"{dj:.6f}", f"{di:.6f}"]  # DICOM: (between rows, between columns)
        ds.SliceThickness = f"{dk:.6f}"
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, int(signed)
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        if modality == "CT":
            ds.RescaleType = "HU"
            ds.KVP = "120"
        if window is not None:
            ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"
        ds.PixelData = np.ascontiguousarray(plane).tobytes()
        path = folder / f"IM{names[k]:05d}_{series_uid[-6:]}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _base_dataset(sop_class: str, modality: str, series_uid: Optional[str] = None) -> pydicom.Dataset:
    """Patient/study/series/equipment attributes shared by the single-file builders."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid or generate_uid()
    ds.PatientName, ds.PatientID, ds.Modality = "Phantom^Test", "PHANTOM1", modality
    ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "20240102", "030405", 2, 1
    return ds


def write_enhanced_dicom(
    path: Union[str, Path],
    array_kji: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    direction: Optional[np.ndarray] = None,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
    reverse_frames: bool = True,
) -> Path:
    """One Enhanced CT multi-frame file; geometry and rescale live in the functional group sequences.

    With ``reverse_frames`` frame 0 is the *last* slice, so readers must order frames by position.
    """
    from pydicom.sequence import Sequence as DicomSequence

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    di, dj, dk = (float(s) for s in spacing)
    stored = np.round((np.asarray(array_kji, dtype=np.float64) - intercept) / slope).astype(np.int16)
    order = list(range(len(stored)))[::-1] if reverse_frames else list(range(len(stored)))
    ds = _base_dataset("1.2.840.10008.5.1.4.1.1.2.1", "CT")  # Enhanced CT Image Storage
    ds.FrameOfReferenceUID = generate_uid()
    ds.NumberOfFrames = len(order)
    ds.Rows, ds.Columns = stored.shape[1:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    shared = pydicom.Dataset()
    orientation, measures, transform = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
    orientation.ImageOrientationPatient = [f"{v:.8f}" for v in np.r_[direction[:, 0], direction[:, 1]]]
    measures.PixelSpacing, measures.SliceThickness = [f"{dj:.6f}", f"{di:.6f}"], f"{dk:.6f}"
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = f"{slope:g}", f"{intercept:g}", "HU"
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    frames = []
    for k in order:
        group, position = pydicom.Dataset(), pydicom.Dataset()
        position.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(origin) + k * dk * direction[:, 2]]
        group.PlanePositionSequence = DicomSequence([position])
        frames.append(group)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(frames)
    ds.PixelData = np.ascontiguousarray(stored[order]).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_dicom_image(
    path: Union[str, Path], pixels: np.ndarray, *, modality: str = "DX", imager_spacing: Optional[float] = None
) -> Path:
    """A projection radiograph or colour secondary capture: no patient-space geometry, only pixel spacing.

    ``pixels`` is ``(rows, cols)`` uint16 grey or ``(rows, cols, 3)`` uint8 RGB.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.asarray(pixels)
    rgb = pixels.ndim == 3
    ds = _base_dataset(_SECONDARY_CAPTURE if rgb else "1.2.840.10008.5.1.4.1.1.1.1", modality)  # SC / DX
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if imager_spacing is not None:
        ds.ImagerPixelSpacing = [f"{imager_spacing:g}", f"{imager_spacing:g}"]
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_phantom_dicom(
    folder: Union[str, Path],
    *,
    seed: int = 0,
    shape: tuple[int, int, int] = (8, 64, 64),
    spacing: tuple[float, float, float] = (5.0, 5.0, 10.0),
    direction: Optional[np.ndarray] = None,
):
    """The abdominal phantom as a CT DICOM series (intercept −1024): returns ``(paths, ct, labels, names)``.

    ``ct``/``labels`` are the phantom volumes the series was written from, so a test can compare what a reader
    (or a DICOM SEG writer) produces against known voxels and geometry.
    """
    from medsam3_core.phantom import make_abdomen_phantom

    ct, labels, names = make_abdomen_phantom(seed, shape=shape, spacing=spacing, direction=direction)
    paths = write_dicom_series(folder, ct.array, ct.spacing, ct.origin, ct.direction, intercept=-1024,
                               window=(40, 400), description="Abdomen phantom")
    return paths, ct, labels, names


def mni152_files(tmp_dir: Union[str, Path]) -> tuple[Path, Path]:
    """Write nilearn's bundled MNI152 T1 template and its brain mask (1 mm, shipped in the wheel, no download)."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    t1, mask = tmp_dir / "mni152_t1.nii.gz", tmp_dir / "mni152_brain_mask.nii.gz"
    load_mni152_template(resolution=1).to_filename(t1)
    load_mni152_brain_mask(resolution=1).to_filename(mask)
    return t1, mask


def write_nnunet_dataset(
    root: Union[str, Path], cases: Sequence[tuple[np.ndarray, np.ndarray]], labels: dict[str, int]
) -> Path:
    """An nnU-Net raw dataset folder: per ``(image, label map)`` pair ``imagesTr/caseNN_0000.nii.gz`` and
    ``labelsTr/caseNN.nii.gz`` (identity affine), and a CT ``dataset.json`` naming ``labels`` (background added)."""
    import nibabel as nib

    root = Path(root)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for c, (image, label) in enumerate(cases):
        nib.save(nib.Nifti1Image(image, np.eye(4)), root / "imagesTr" / f"case{c:02d}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"case{c:02d}.nii.gz")
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **labels}, "numTraining": len(cases),
            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root
