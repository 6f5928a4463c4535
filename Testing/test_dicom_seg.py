"""DICOM SEG export: read back with pydicom/highdicom, frames equal the mask, references, codes and validation."""

from __future__ import annotations

import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from builders import oblique_direction, write_dicom_series
from pydicom.uid import SegmentationStorage

from medsam3_core import __version__
from medsam3_core.io.dicom_seg import ALGORITHM_NAME, write_dicom_seg
from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume
from medsam3_core.io.reading import read_volume
from medsam3_core.prompts import LOCAL_SCHEME
from medsam3_core.segmenter import SegmentInfo

SHAPE = (7, 20, 24)


def _series(tmp_path, **kwargs) -> Volume:
    values = np.random.default_rng(1).integers(-200, 300, SHAPE).astype(np.int16)
    write_dicom_series(tmp_path / "series", values, (0.7, 0.8, 2.5), (10.0, -20.0, 30.0), oblique_direction(20),
                       **kwargs)
    return read_volume(tmp_path / "series")


def _labels() -> np.ndarray:
    lab = np.zeros(SHAPE, np.uint8)
    lab[1:4, 5:10, 5:12] = 1
    lab[3:6, 12:18, 2:8] = 2  # label 3 ("hepatic") stays empty
    return lab


SEGMENTS = [
    SegmentInfo("Kidneys", "kidney", 1, 0, 0.0, 0.9, None),
    SegmentInfo("brain tumor", "brain tumor", 2, 0, 0.0, 0.5, None),
    SegmentInfo("hepatic", "liver", 3, 0, 0.0, 0.1, None),
]


def _frames_by_source(seg, source: Volume) -> np.ndarray:
    """The SEG as a label map, stacked in the order of the source files (highdicom's own reconstruction)."""
    uids = [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in source.metadata["dicom_files"]]
    return seg.get_pixels_by_source_instance(uids, combine_segments=True, relabel=False, dtype=np.uint8)


def test_seg_frames_match_the_mask_and_reference_the_series(tmp_path):
    source = _series(tmp_path)
    lab = _labels()
    out = write_dicom_seg(source.with_array(lab), SEGMENTS, source, tmp_path / "out" / "seg.dcm", model="demo")
    assert out == tmp_path / "out" / "seg.dcm" and sorted(p.name for p in out.parent.iterdir()) == ["seg.dcm"]

    ds = pydicom.dcmread(out)
    assert ds.SOPClassUID == SegmentationStorage and ds.Modality == "SEG"
    assert ds.StudyInstanceUID == source.metadata["study_uid"]
    assert ds.FrameOfReferenceUID == source.metadata["frame_of_reference_uid"]
    assert ds.SeriesInstanceUID != source.metadata["series_uid"]
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == source.metadata["series_uid"]
    assert len(ref.ReferencedInstanceSequence) == SHAPE[0]

    seg = hd.seg.segread(out)
    np.testing.assert_array_equal(_frames_by_source(seg, source), lab)
    assert ds.NumberOfFrames == 3 + 3, "empty frames are omitted (3 slices per non-empty segment)"


def test_segments_carry_prompt_codes_and_algorithm(tmp_path):
    source = _series(tmp_path)
    out = write_dicom_seg(source.with_array(_labels()), SEGMENTS, source, tmp_path / "seg.dcm", model="demo (random)")
    ds = pydicom.dcmread(out)
    items = ds.SegmentSequence
    assert [int(s.SegmentNumber) for s in items] == [1, 2, 3]
    assert [s.SegmentLabel for s in items] == ["Kidneys", "brain tumor", "hepatic"]
    kidney_type = items[0].SegmentedPropertyTypeCodeSequence[0]
    assert (kidney_type.CodeValue, kidney_type.CodingSchemeDesignator, kidney_type.CodeMeaning) == (
        "64033007", "SCT", "Kidney")
    assert items[0].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "91723000"
    local = items[1].SegmentedPropertyTypeCodeSequence[0]
    assert local.CodingSchemeDesignator == LOCAL_SCHEME and local.CodeMeaning == "brain tumor"
    assert items[2].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    assert [s.CodingSchemeDesignator for s in ds.CodingSchemeIdentificationSequence].count(LOCAL_SCHEME) == 1
    for item in items:
        assert item.SegmentAlgorithmType == "AUTOMATIC" and item.SegmentAlgorithmName == ALGORITHM_NAME
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == ALGORITHM_NAME and algorithm.AlgorithmVersion == __version__
        assert "demo (random)" in algorithm.AlgorithmParameters
    assert ds.SoftwareVersions == __version__


def test_user_synonym_codes_are_used(tmp_path):
    source = _series(tmp_path)
    syn = tmp_path / "syn.json"
    syn.write_text('{"concepts": {"brain tumor": {"category": "abnormality", '
                   '"code": ["126952004", "SCT", "Neoplasm of brain"]}}}')
    out = write_dicom_seg(source.with_array(_labels()), SEGMENTS, source, tmp_path / "seg.dcm", synonyms_file=syn)
    code = pydicom.dcmread(out).SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("126952004", "SCT")


def test_series_with_a_missing_slice_maps_frames_to_their_own_images(tmp_path):
    source = _series(tmp_path, gap_at=4)
    assert source.metadata["slice_gaps"], "the builder should have produced a gap"
    lab = _labels()
    out = write_dicom_seg(source.with_array(lab), SEGMENTS, source, tmp_path / "seg.dcm")
    np.testing.assert_array_equal(_frames_by_source(hd.seg.segread(out), source), lab)


def test_empty_result_still_writes_a_valid_seg(tmp_path):
    source = _series(tmp_path)
    out = write_dicom_seg(source.with_array(np.zeros(SHAPE, np.uint8)), SEGMENTS[:1], source, tmp_path / "e.dcm")
    seg = hd.seg.segread(out)
    assert not _frames_by_source(seg, source).any() and len(seg.SegmentSequence) == 1


def test_non_dicom_input_and_wrong_grid_are_user_errors(tmp_path):
    plain = Volume(np.zeros(SHAPE, np.int16), modality="CT")
    with pytest.raises(InputError, match="not DICOM"):
        write_dicom_seg(plain.with_array(_labels()), SEGMENTS, plain, tmp_path / "seg.dcm")
    source = _series(tmp_path)
    shifted = Volume(_labels(), source.spacing, (0.0, 0.0, 0.0), source.direction)
    with pytest.raises(InputError, match="grid"):
        write_dicom_seg(shifted, SEGMENTS, source, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists() and not list(tmp_path.glob(".seg-*"))


def test_multi_frame_source_is_refused_with_a_clear_line(tmp_path):
    from builders import write_enhanced_dicom

    (tmp_path / "mf").mkdir()
    write_enhanced_dicom(tmp_path / "mf" / "ct.dcm", np.zeros(SHAPE, np.int16), (0.7, 0.8, 2.5))
    source = read_volume(tmp_path / "mf")
    with pytest.raises(InputError, match="single-frame"):
        write_dicom_seg(source.with_array(_labels()), SEGMENTS, source, tmp_path / "seg.dcm")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools (dciodvfy) not installed")
def test_dciodvfy_finds_no_errors(tmp_path):
    source = _series(tmp_path)
    out = write_dicom_seg(source.with_array(_labels()), SEGMENTS, source, tmp_path / "seg.dcm")
    report = subprocess.run(["dciodvfy", str(out)], capture_output=True, text=True, timeout=60)
    lines = (report.stdout + report.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert errors == [], "\n".join(lines)
    warnings = [line for line in lines if line.startswith("Warning")]
    assert all(LOCAL_SCHEME in w for w in warnings), "\n".join(warnings)


def test_cli_writes_dicom_seg_for_a_dicom_series(tmp_path):
    from medsam3_core.cli.infer import main

    source = _series(tmp_path)
    seg_path = tmp_path / "result.dcm"
    code = main(["infer", str(tmp_path / "series"), "kidney", "renal mass", "-o", str(tmp_path / "out"),
                 "--device", "cpu", "--mode", "detect", "--progress", "none", "--quiet", "--dicom-seg", str(seg_path)])
    assert code == 0
    labels = read_volume(tmp_path / "out" / "labels.nii.gz")
    seg = hd.seg.segread(seg_path)
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["kidney", "renal mass"]
    np.testing.assert_array_equal(_frames_by_source(seg, source), labels.array)
