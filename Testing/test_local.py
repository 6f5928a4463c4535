"""LocalSegmenter: the Segmenter protocol over the engine (result on the input grid, report, warnings)."""

import dataclasses
import json

import numpy as np
import pytest

from medsam3_core.errors import Cancelled, PromptError
from medsam3_core.io.geometry import Volume
from medsam3_core.segmenters.local import LocalSegmenter
from medsam3_core.progress import CancelToken
from medsam3_core.segmenter import SegmentOptions


@pytest.fixture(scope="module")
def volume():
    rng = np.random.default_rng(7)
    direction = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # sagittal acquisition
    return Volume(rng.normal(100, 30, (6, 16, 20)).astype(np.int16), spacing=(0.5, 0.6, 2.0),
                  origin=(-10.0, 4.0, 30.0), direction=direction, modality="MR")


def test_result_is_on_the_input_grid_with_report(random_bundle, volume):
    segmenter = LocalSegmenter(random_bundle)
    options = SegmentOptions(threshold=0.2, confidence_map=True, batch_size=3)
    result = segmenter.segment(volume, ["left kidney", "liver"], options, concepts=["kidney", "liver"])
    assert result.labelmap.same_geometry(volume) and result.confidence.same_geometry(volume)
    assert result.labelmap.array.dtype == np.uint8
    expected = [("left kidney", "kidney", 1), ("liver", "liver", 2)]
    assert [(s.prompt, s.concept, s.label) for s in result.segments] == expected
    for seg in result.segments:
        assert seg.voxels == int((result.labelmap.array == seg.label).sum())
        assert seg.volume_ml == pytest.approx(seg.voxels * 0.5 * 0.6 * 2.0 / 1000, abs=1e-4)
        assert sum(o.voxels for o in seg.objects) == seg.voxels
        if seg.objects:
            first = min(o.slice_range[0] for o in seg.objects)
            assert seg.slice_range == (first, max(o.slice_range[1] for o in seg.objects))
            assert seg.score == max(o.score for o in seg.objects)
    assert np.all((result.confidence.array > 0) == (result.labelmap.array > 0))
    report = json.loads(json.dumps(result.to_report()))
    assert {"encode", "heads", "track", "total"} <= set(report["timings"])
    assert report["options"]["mode"] == "track" and report["model"] == random_bundle.source


def test_no_threshold_means_the_models_recommended_one(random_bundle, volume):
    recommending = dataclasses.replace(random_bundle, score_threshold=0.3)
    result = LocalSegmenter(recommending).segment(volume, ["liver"], SegmentOptions(mode="detect"))
    assert result.options.threshold == 0.3 and result.threshold_source == "model"
    report = result.to_report()
    assert report["options"]["threshold"] == 0.3 and report["threshold_source"] == "model"
    given = LocalSegmenter(recommending).segment(volume, ["liver"], SegmentOptions(mode="detect", threshold=0.6))
    assert given.options.threshold == 0.6 and given.to_report()["threshold_source"] == "user"
    nothing = LocalSegmenter(dataclasses.replace(random_bundle, score_threshold=0.999)).segment(
        volume, ["liver"], SegmentOptions(mode="detect"))
    assert any("0.999 (the model's recommended one)" in w for w in nothing.warnings)


def test_checkpoint_without_tracker_runs_detect_mode_with_a_warning(random_bundle, volume):
    detector_only = dataclasses.replace(random_bundle, tracker=None, tracker_neck=None)
    result = LocalSegmenter(detector_only).segment(volume, ["liver"], SegmentOptions(threshold=0.2))
    assert result.options.mode == "detect"
    assert any("no (trained) tracker" in w for w in result.warnings)


def test_memory_size_is_clamped_to_the_checkpoint(random_bundle, volume):
    result = LocalSegmenter(random_bundle).segment(volume, ["liver"], SegmentOptions(threshold=0.2, memory_size=50))
    assert result.options.memory_size == random_bundle.tracker.num_maskmem
    assert any("memory size 50 exceeds" in w for w in result.warnings)  # in words, not a command-line flag


def test_nothing_found_is_reported_not_an_error(random_bundle, volume):
    result = LocalSegmenter(random_bundle).segment(volume, ["liver"], SegmentOptions(threshold=1.0, mode="detect"))
    assert not result.labelmap.array.any() and result.segments[0].slice_range is None
    assert any("Nothing found for 'liver'" in w for w in result.warnings)


def test_bad_prompts_and_cancel(random_bundle, volume):
    segmenter = LocalSegmenter(random_bundle)
    with pytest.raises(PromptError):
        segmenter.segment(volume, ["liver", "spleen"], concepts=["liver"])
    with pytest.raises(PromptError):
        segmenter.segment(volume, ["  "])
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        segmenter.segment(volume, ["liver"], cancel=token)


def test_seconds_counts_the_engine_total_once(random_bundle):
    """The engine's stages add up to its total; the call's seconds add only what ran outside it (reading)."""
    volume = Volume(np.random.default_rng(0).normal(size=(4, 32, 32)).astype(np.float32), modality="MR")
    result = LocalSegmenter(random_bundle).segment(volume, ["liver"], SegmentOptions(mode="detect"))
    result.timings = {"read": 0.5, **result.timings}
    assert abs(result.seconds - (0.5 + result.timings["total"])) < 0.01
