"""``clips`` mode: clip placement, the three fusion rules on hand-made clips, and runs on a phantom through the engine.

Known answers: every slice is in a clip; with K ≥ depth the result is track mode's, voxel for voxel; under
``pixel_score`` each voxel's confidence is the highest any clip gave it; the per-slice rules take a whole slice of a
prompt from the clip they trust.
"""

import numpy as np
import pytest

from medsam3_core.engine.clips import ClipResult, clip_ranges, merge_clips, run_clips
from medsam3_core.engine.volume_engine import ObjectRecord, VolumeEngine
from medsam3_core.errors import InputError
from medsam3_core.phantom import make_abdomen_phantom
from medsam3_core.segmenter import SegmentOptions
from medsam3_core.segmenters.local import LocalSegmenter


@pytest.fixture(scope="module")
def phantom():
    return make_abdomen_phantom(seed=2, shape=(7, 48, 48))[0]


@pytest.mark.parametrize("depth,length", [(1, 4), (3, 4), (4, 4), (5, 4), (10, 4), (11, 3), (9, 1), (6, 2)])
def test_clips_cover_every_slice_with_k_slices_each(depth, length):
    ranges = clip_ranges(depth, length)
    covered = sorted({k for start, stop in ranges for k in range(start, stop)})
    assert covered == list(range(depth))
    assert all(stop - start == min(length, depth) for start, stop in ranges)
    assert ranges[0][0] == 0 and ranges[-1][1] == depth
    if length >= depth:
        assert ranges == [(0, depth)]


def test_interior_slices_lie_in_two_clips():
    ranges = clip_ranges(10, 4)
    assert ranges == [(0, 4), (2, 6), (4, 8), (6, 10)]
    counts = [sum(start <= k < stop for start, stop in ranges) for k in range(10)]
    assert counts == [1, 1, 2, 2, 2, 2, 2, 2, 1, 1]


def _clip(start, labels, confidence, objects):
    return ClipResult(start, np.asarray(labels, np.uint8), np.asarray(confidence, np.float32), objects)


@pytest.fixture()
def two_clips():
    """Two clips of 2 slices over 3 slices of 1×2 pixels, overlapping on slice 1.

    Clip A (slices 0–1) sees prompt 0 on both pixels of slice 1 with confidence 0.6 / 0.2, its object scoring 0.9 on
    slice 1 and 0.95 at best; clip B (slices 1–2) sees it on slice 1 with confidence 0.3 / 0.5, its object scoring
    0.7 on slice 1 but 0.99 on slice 2.
    """
    a = _clip(0, [[[1, 0]], [[1, 1]]], [[[0.8, 0]], [[0.6, 0.2]]], [ObjectRecord(1, 0, 3, {0: 0.95, 1: 0.9})])
    b = _clip(1, [[[1, 1]], [[0, 1]]], [[[0.3, 0.5]], [[0, 0.9]]], [ObjectRecord(1, 0, 3, {0: 0.7, 1: 0.99})])
    return [a, b]


def test_pixel_score_takes_each_voxel_from_the_most_confident_clip(two_clips):
    labels, confidence, objects = merge_clips(3, two_clips, prompts=1, rule="pixel_score")
    np.testing.assert_allclose(confidence[1, 0], [0.6, 0.5])
    np.testing.assert_array_equal(labels[:, 0], [[1, 0], [1, 1], [0, 1]])
    assert [o.object_id for o in objects] == [1, 2]
    assert objects[1].slice_scores == {1: 0.7, 2: 0.99}  # volume slice indices


def test_tracker_score_takes_the_slice_from_the_clip_that_tracked_best_there(two_clips):
    labels, confidence, _ = merge_clips(3, two_clips, prompts=1, rule="tracker_score")
    np.testing.assert_allclose(confidence[1, 0], [0.6, 0.2])  # clip A: 0.9 on slice 1 beats B's 0.7


def test_detection_score_takes_the_slice_from_the_clip_with_the_best_detection(two_clips):
    labels, confidence, _ = merge_clips(3, two_clips, prompts=1, rule="detection_score")
    np.testing.assert_allclose(confidence[1, 0], [0.3, 0.5])  # clip B reached 0.99, A only 0.95


def test_merge_refuses_gaps_and_unknown_rules(two_clips):
    with pytest.raises(ValueError, match=r"slices \[3\] are in no clip"):
        merge_clips(4, two_clips, prompts=1)
    with pytest.raises(ValueError, match="unknown clip fusion"):
        merge_clips(3, two_clips, prompts=1, rule="small_first")
    with pytest.raises(InputError, match="clip fusion rule must be one of"):
        SegmentOptions(clip_fusion="small_first")
    with pytest.raises(InputError, match="clip length must be at least 1"):
        SegmentOptions(clip_length=0)


def test_one_clip_over_the_whole_volume_is_track_mode(present_bundle, phantom):
    engine = VolumeEngine(present_bundle)
    options = SegmentOptions(mode="clips", threshold=0.0, clip_length=phantom.shape[0])
    clips = run_clips(engine, phantom, ["liver", "kidney"], options)
    track = engine.run(phantom, ["liver", "kidney"], SegmentOptions(mode="track", threshold=0.0))
    assert clips.mode == "clips" and track.labels.any()
    np.testing.assert_array_equal(clips.labels, track.labels)
    np.testing.assert_array_equal(clips.confidence, track.confidence)
    assert [(o.prompt, o.slice_scores) for o in clips.objects] == [(o.prompt, o.slice_scores) for o in track.objects]


class SpyEngine(VolumeEngine):
    """The real engine, recording what each clip run was given and returned."""

    def __init__(self, bundle):
        super().__init__(bundle)
        self.runs = []

    def run(self, volume, concepts, options=None, progress=None, cancel=None):
        result = super().run(volume, concepts, options, progress, cancel)
        self.runs.append((volume, concepts.options if options is None else options, result))
        return result


def test_short_clips_run_independently_and_merge_by_pixel_score(present_bundle, phantom):
    engine = SpyEngine(present_bundle)
    options = SegmentOptions(mode="clips", threshold=0.0, clip_length=2)
    merged = run_clips(engine, phantom, ["liver"], options)
    ranges = clip_ranges(phantom.shape[0], 2)
    assert [run[0].shape[0] for run in engine.runs] == [stop - start for start, stop in ranges]
    assert all(run[1].mode == "track" for run in engine.runs)
    windows = {run[1].window for run in engine.runs}
    assert len(windows) == 1 and isinstance(windows.pop(), tuple)  # one intensity window for every clip

    best = np.zeros(phantom.shape, np.float32)
    for (start, stop), (_, _, result) in zip(ranges, engine.runs):
        best[start:stop] = np.maximum(best[start:stop], result.confidence)
    np.testing.assert_array_equal(merged.confidence, best)
    assert merged.labels.shape == phantom.shape and merged.mode == "clips"
    assert all(o.slice_range[1] < phantom.shape[0] for o in merged.objects)


def test_the_segmenter_runs_the_models_recommended_mode(present_bundle, phantom):
    present_bundle.recommended_mode, present_bundle.clip_length = "clips", 3
    try:
        result = LocalSegmenter(present_bundle).segment(phantom, ["liver"], SegmentOptions(mode=None, threshold=0.0))
    finally:
        present_bundle.recommended_mode, present_bundle.clip_length = "track", 4
    assert result.options.mode == "clips" and result.options.clip_length == 3
    assert result.to_report()["options"]["clip_fusion"] == "pixel_score"
