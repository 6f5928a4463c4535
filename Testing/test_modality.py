"""An untagged scan whose values are Hounsfield units is windowed as CT, says so, and ``--modality`` still wins.

The HU phantom is written as NIfTI (which records no modality) and read back, so these are the files a user has.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medsam3_core.cli.infer import main
from medsam3_core.engine.preprocess import CT_WINDOWS, IntensityNormalizer
from medsam3_core.io.modality import hounsfield_evidence
from medsam3_core.io.reading import read_volume, write_volume
from medsam3_core.phantom import make_abdomen_phantom

SOFT_TISSUE = (CT_WINDOWS["soft-tissue"][0] - CT_WINDOWS["soft-tissue"][1] / 2,
               CT_WINDOWS["soft-tissue"][0] + CT_WINDOWS["soft-tissue"][1] / 2)


@pytest.fixture(scope="module")
def untagged_ct(tmp_path_factory):
    """An abdominal phantom in HU at 0.8 mm in-plane and 2.5 mm slices, saved as NIfTI without any modality."""
    ct, _, _ = make_abdomen_phantom(seed=7, shape=(12, 96, 96), spacing=(0.8, 0.8, 2.5))
    path = tmp_path_factory.mktemp("hu") / "scan.nii.gz"
    write_volume(ct.with_array(ct.array, modality=None), path)
    return path


def _mr_like(seed: int = 0) -> np.ndarray:
    """An MR-like head: background 0, brain and tissue in the hundreds to thousands, no negative value."""
    rng = np.random.default_rng(seed)
    _, y, x = np.mgrid[:12, :64, :64]
    head = ((y - 32) ** 2 + (x - 32) ** 2) < 26**2
    return np.where(head, 600 + 300 * rng.random(head.shape), rng.random(head.shape) * 5).astype(np.float32)


def test_hu_phantom_nifti_is_read_without_modality_and_windowed_as_ct(untagged_ct):
    volume = read_volume(untagged_ct)
    assert volume.modality is None  # NIfTI records none: the windowing rule, not the reader, decides
    norm = IntensityNormalizer.for_volume(volume)
    assert (norm.low, norm.high) == SOFT_TISSUE
    assert "Hounsfield" in norm.inferred and "air" in norm.inferred
    assert "read as CT" in norm.description


def test_evidence_on_the_phantom_is_air_and_a_soft_tissue_mode(untagged_ct):
    evidence = hounsfield_evidence(read_volume(untagged_ct).array)
    assert evidence.is_ct
    assert evidence.air_fraction >= 0.05 and -200 <= evidence.tissue_mode <= 200


def test_mr_like_image_keeps_percentile_window():
    array = _mr_like()
    assert not hounsfield_evidence(array).is_ct
    from medsam3_core.io.geometry import Volume

    norm = IntensityNormalizer.for_volume(Volume(array))
    assert norm.inferred == "" and norm.description.startswith("percentiles")


@pytest.mark.parametrize(
    "array, why",
    [
        (np.where(np.arange(10000) % 2, -1000.0, 3000.0), "air but no water-like tissue"),
        (np.random.default_rng(1).normal(0, 1, 10000), "z-scored MR: tissue mode near 0 but no air"),
        (np.full(100, np.nan), "no finite value"),
    ],
)
def test_signed_images_that_are_not_ct_are_not_read_as_ct(array, why):
    assert not hounsfield_evidence(array).is_ct, why


def test_ct_with_outside_field_padding_is_still_ct(untagged_ct):
    array = read_volume(untagged_ct).array.astype(np.int16)
    array[:, :, :10] = -3024  # what several scanners write outside the reconstruction circle
    assert hounsfield_evidence(array).is_ct


def test_explicit_modality_overrides_the_rule(untagged_ct):
    norm = IntensityNormalizer.for_volume(read_volume(untagged_ct, modality="MR"))
    assert norm.inferred == "" and norm.description.startswith("percentiles")
    tagged = IntensityNormalizer.for_volume(read_volume(untagged_ct, modality="CT"))
    assert (tagged.low, tagged.high) == SOFT_TISSUE and tagged.inferred == ""


def _report(args: list[str]) -> dict:
    assert main(["infer", *args, "--device", "cpu", "--progress", "none", "--mode", "detect"]) == 0
    return json.loads((Path(args[args.index("-o") + 1]) / "report.json").read_text())


def test_cli_report_says_the_untagged_scan_was_read_as_ct_and_override_silences_it(untagged_ct, tmp_path):
    report = _report([str(untagged_ct), "liver", "-o", str(tmp_path / "auto")])
    assert any(w.startswith("Read as CT:") and "Hounsfield" in w for w in report["warnings"])
    report = _report([str(untagged_ct), "liver", "-o", str(tmp_path / "mr"), "--modality", "MR"])
    assert not any("Read as CT" in w for w in report["warnings"])


def test_every_in_process_path_gets_the_reason_in_its_result_warnings(untagged_ct, random_bundle):
    """Server jobs, the viewer and the Slicer module's in-process run all go through LocalSegmenter: a volume built
    from an array without modality (as Slicer and the server wire build it) gets the same rule and the same note."""
    from medsam3_core.io.geometry import Volume
    from medsam3_core.segmenter import SegmentOptions
    from medsam3_core.segmenters.local import LocalSegmenter

    read = read_volume(untagged_ct)
    bare = Volume(read.array, read.spacing, read.origin, read.direction)  # no modality, no metadata
    segmenter = LocalSegmenter(random_bundle)
    result = segmenter.segment(bare, ["liver"], SegmentOptions(mode="detect", threshold=0.5))
    assert sum(w.startswith("Read as CT:") for w in result.warnings) == 1
    tagged = Volume(read.array, read.spacing, read.origin, read.direction, "CT")
    result = segmenter.segment(tagged, ["liver"], SegmentOptions(mode="detect", threshold=0.5))
    assert not any("Read as CT" in w for w in result.warnings)
