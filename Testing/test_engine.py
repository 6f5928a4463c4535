"""Engine orchestration on the tiny random model: both sweep directions, stable ids, progress, cancel, streaming
window, 2D inputs, and detect mode equal to the 2D detector slice by slice."""

import numpy as np
import pytest
import torch

from medsam3_core.engine.detector import Detections, Detector
from medsam3_core.engine.fusion import FusionRule
from medsam3_core.engine.postprocess import instances_for, pixelwise_max_labelmap
from medsam3_core.engine.preprocess import IntensityNormalizer, Letterbox, to_model_input
from medsam3_core.engine.sweeps import Sweep as _Sweep
from medsam3_core.engine.tracker import MemoryTracker, TrackStep
from medsam3_core.engine.volume_engine import VolumeEngine
from medsam3_core.errors import Cancelled
from medsam3_core.io.geometry import Volume
from medsam3_core.progress import CancelToken
from medsam3_core.segmenter import SegmentOptions

NUM_SLICES, ROWS, COLS = 9, 24, 30
WINDOW = (40.0, 80.0)  # slice k has intensity 10·k: each slice maps to its own grey level


def _graded_volume() -> Volume:
    array = np.stack([np.full((ROWS, COLS), 10.0 * k, np.float32) for k in range(NUM_SLICES)])
    return Volume(array, spacing=(0.7, 0.7, 2.5), modality="MR")


class ScriptedDetector(Detector):
    """The real ViT and text encoder, but detections scripted per slice (recognised by its grey level)."""

    def __init__(self, bundle, script):
        super().__init__(bundle)
        self.script = script  # slice -> list of (prompt, score, (y0, y1, x0, x1) on the low-res grid)
        self.encoded: list[list[int]] = []

    def encode_images(self, pixel_values):
        grey = ((pixel_values[:, 0, 0, 0] + 1) / 2 * WINDOW[1] + WINDOW[0] - WINDOW[1] / 2).tolist()
        self._slices = [int(round(g / 10.0)) for g in grey]
        self.encoded.append(self._slices)
        return super().encode_images(pixel_values)

    def detect(self, vision, text, top_k=None, min_score=0.0, on_host=True):
        side = 4 * self.bundle.tracker.prompt_encoder.image_embedding_size[0]
        b, p, q = len(self._slices), len(text), 4
        logits = torch.full((b, p, q, side, side), -8.0)
        scores = torch.zeros(b, p, q)
        for row, index in enumerate(self._slices):
            for n, (prompt, score, (y0, y1, x0, x1)) in enumerate(self.script.get(index, [])):
                logits[row, prompt, n, y0:y1, x0:x1] = 8.0
                scores[row, prompt, n] = score
        return Detections(logits, scores, scores.amax(-1), torch.zeros(b, p, q, 4))


#: Propagation mechanics: every object is output as far as the tracker carries it (no confirmation, fusion rule 6).
PROPAGATE_ALL = FusionRule(spawn_score=0.5, keep_score=0.6, patience=1, extend_slices=None, keep_alive=None)


def _engine(bundle, script, **kwargs):
    engine = VolumeEngine(bundle, max_objects=3, **kwargs)
    engine.detector = ScriptedDetector(bundle, script)
    return engine


def test_object_seeded_mid_volume_is_tracked_both_ways_with_one_id(present_bundle):
    script = {4: [(0, 0.9, (4, 14, 4, 14))]}
    options = SegmentOptions(window=WINDOW, threshold=0.5, batch_size=2)
    detect_options = SegmentOptions(**{**options.to_dict(), "mode": "detect"})
    detect = _engine(present_bundle, script).run(_graded_volume(), ["liver"], detect_options)
    assert [k for k in range(NUM_SLICES) if detect.labels[k].any()] == [4]

    rule = FusionRule(spawn_score=0.5, keep_score=0.3, patience=2, extend_slices=None, keep_alive=None)
    result = _engine(present_bundle, script, rule=rule).run(_graded_volume(), ["liver"], options)
    slices = [k for k in range(NUM_SLICES) if result.labels[k].any()]
    assert min(slices) < 4 < max(slices)  # propagated below and above the seed slice
    assert len(result.objects) == 1
    obj = result.objects[0]
    assert obj.object_id == 1 and obj.slice_range == (min(slices), max(slices))
    assert obj.slice_scores[4] == pytest.approx(0.9) and all(v < 0.9 for k, v in obj.slice_scores.items() if k != 4)
    assert obj.voxels == int((result.labels == 1).sum())


class EchoTracker:
    """A scripted tracker: predicts each object where it was last remembered, with a fixed presence of 0.8, so
    an unconfirmed object's confidence decays 0.8× per slice (fusion rule 3) and the bookkeeping is predictable."""

    PRESENCE_LOGIT = float(np.log(0.8 / 0.2))

    class Memory:
        def __init__(self, logits):
            self.seed_logits = self.logits = logits

        def turn(self):
            self.logits = self.seed_logits

    def __init__(self, bundle, memory_size, num_slices):
        self.real = MemoryTracker(bundle, memory_size, num_slices)
        self.mask_grid = self.real.mask_grid

    def batch_features(self, vision):
        return self.real.batch_features(vision)

    def seed(self, feats, masks, index):
        return [self.Memory(torch.where(m, 8.0, -8.0)) for m in masks]

    def propagate(self, feats, memories, index):
        n = len(memories)
        logits = torch.stack([m.logits for m in memories]) if n else torch.zeros(0, *self.mask_grid)
        return TrackStep(logits, torch.full((n,), self.PRESENCE_LOGIT), torch.zeros(n, 1))

    def remember(self, feats, memories, index, mask_logits, present, pointers):
        for memory, logits in zip(memories, mask_logits):
            memory.logits = logits.clone()


def test_objects_appear_split_vanish_and_keep_ids(present_bundle):
    """liver: object A on slices 3–5 (split in two pieces on 5), object B appears on 7; tumour C overlaps A on 4–6.

    Expected with keep_score 0.6, patience 1 and presence 0.8: each object outlives its last detection by one slice
    in each direction (0.8 × score ≥ 0.6, then 0.64 × score < 0.6), the split does not start an object, B gets a new
    id, and every object keeps its id in both sweeps.
    """
    a, left, right = (4, 14, 4, 14), (4, 14, 4, 9), (4, 14, 9, 14)
    script = {
        3: [(0, 0.8, a)],
        4: [(0, 0.95, a), (1, 0.8, (8, 18, 8, 18))],
        5: [(0, 0.85, left), (0, 0.6, right), (1, 0.9, (8, 18, 8, 18))],
        6: [(1, 0.8, (8, 18, 8, 18))],
        7: [(0, 0.7, (20, 28, 20, 28))],
    }
    rule = PROPAGATE_ALL
    engine = _engine(present_bundle, script, rule=rule, tracker_factory=EchoTracker)
    options = SegmentOptions(window=WINDOW, threshold=0.5, batch_size=3)
    result = engine.run(_graded_volume(), ["liver", "tumour"], options)
    ranges = {(o.prompt, o.slice_range) for o in result.objects}
    assert ranges == {(0, (2, 6)), (0, (7, 7)), (1, (3, 7))}
    assert sorted(o.object_id for o in result.objects) == [1, 2, 3]
    liver_a = next(o for o in result.objects if o.slice_range == (2, 6))
    assert liver_a.slice_scores[4] == pytest.approx(0.95) and liver_a.slice_scores[2] == pytest.approx(0.64)
    lut = {o.object_id: o.prompt + 1 for o in result.objects}
    assert set(np.unique(result.labels)) == {0, 1, 2}
    assert (result.labels[5] == 1).sum() > 0 and (result.labels[3] == 2).any()  # both prompts where they overlap
    assert all(v in (1, 2) for v in lut.values())


def test_object_started_on_the_way_down_is_also_tracked_upwards(present_bundle):
    """liver A is seeded on slice 6; B is only detected on slice 2, so it starts in the backward sweep. Like every
    object it must outlive its detection by one slice in *both* directions (presence 0.8, keep_score 0.6)."""
    script = {6: [(0, 0.95, (4, 14, 4, 14))], 2: [(0, 0.8, (16, 22, 16, 22))]}
    rule = PROPAGATE_ALL
    engine = _engine(present_bundle, script, rule=rule, tracker_factory=EchoTracker)
    result = engine.run(_graded_volume(), ["liver"], SegmentOptions(window=WINDOW, threshold=0.5, batch_size=3))
    ranges = {o.object_id: o.slice_range for o in result.objects}
    assert ranges == {1: (4, 8), 2: (1, 3)}
    assert result.objects[1].slice_scores[3] == pytest.approx(0.64)  # found by the catch-up sweep


def test_lone_detection_is_not_confirmed_and_tracker_only_ends_are_trimmed(present_bundle):
    """Fusion rule 6 through the engine: liver A is detected on slices 3–5 (the echo tracker would carry it two
    slices further each way at keep_score 0.5), a lone liver detection B on slice 8 nothing confirms. With
    min_detections 2 and extend_slices 1, B is gone and A keeps one tracker-only slice at each end."""
    a = (4, 14, 4, 14)
    script = {3: [(0, 0.9, a)], 4: [(0, 0.95, a)], 5: [(0, 0.9, a)], 8: [(0, 0.8, (20, 26, 20, 26))]}
    rule = FusionRule(spawn_score=0.5, keep_score=0.5, patience=1, min_detections=2, extend_slices=1)
    engine = _engine(present_bundle, script, rule=rule, tracker_factory=EchoTracker)
    result = engine.run(_graded_volume(), ["liver"], SegmentOptions(window=WINDOW, threshold=0.5, batch_size=3))
    assert [o.slice_range for o in result.objects] == [(2, 6)]
    assert [k for k in range(NUM_SLICES) if result.labels[k].any()] == [2, 3, 4, 5, 6]
    assert sorted(result.objects[0].slice_scores) == [2, 3, 4, 5, 6]
    everything = _engine(present_bundle, script, rule=PROPAGATE_ALL, tracker_factory=EchoTracker)
    loose = everything.run(_graded_volume(), ["liver"], SegmentOptions(window=WINDOW, threshold=0.5, batch_size=3))
    assert len(loose.objects) == 2 and loose.labels[8].any()


def test_object_carried_past_its_last_detection_never_covers_another_prompt(present_bundle):
    """liver is detected on slices 2–4; the echo tracker would carry it on with confidence 0.76 > the tumour's 0.55
    on slices 5–6, where a tumour is detected in the same place. With extend_slices 0 the carried liver slices are
    held back and dropped, so the tumour keeps its voxels there (painting them first and clearing them afterwards
    would leave them empty)."""
    a = (4, 14, 4, 14)
    script = {2: [(0, 0.95, a)], 3: [(0, 0.95, a)], 4: [(0, 0.95, a)], 5: [(1, 0.55, a)], 6: [(1, 0.55, a)]}
    rule = FusionRule(spawn_score=0.5, keep_score=0.5, patience=1, extend_slices=0)
    engine = _engine(present_bundle, script, rule=rule, tracker_factory=EchoTracker)
    options = SegmentOptions(window=WINDOW, threshold=0.5, batch_size=3)
    result = engine.run(_graded_volume(), ["liver", "tumour"], options)
    liver = [k for k in range(NUM_SLICES) if (result.labels[k] == 1).any()]
    tumour = [k for k in range(NUM_SLICES) if (result.labels[k] == 2).any()]
    assert liver == [2, 3, 4] and tumour == [5, 6]
    assert (result.labels[5] == 2).sum() == (result.labels[5] > 0).sum() > 0
    liver_object = next(o for o in result.objects if o.prompt == 0)
    assert sorted(liver_object.slice_scores) == [2, 3, 4]


def test_gap_the_tracker_bridges_is_painted_once_a_detection_confirms_it(present_bundle):
    """liver detected on 2 and 5 only: slices 3–4 are held back during the sweep and painted when slice 5's
    detection matches the carried object (one object, slices 2–5), even with extend_slices 0 (keep_alive 2 lets the
    object live through a two-slice gap)."""
    a = (4, 14, 4, 14)
    script = {2: [(0, 0.95, a)], 5: [(0, 0.9, a)]}
    rule = FusionRule(spawn_score=0.5, keep_score=0.5, patience=1, extend_slices=0, keep_alive=2)
    engine = _engine(present_bundle, script, rule=rule, tracker_factory=EchoTracker)
    result = engine.run(_graded_volume(), ["liver"], SegmentOptions(window=WINDOW, threshold=0.5, batch_size=3))
    assert [k for k in range(NUM_SLICES) if result.labels[k].any()] == [2, 3, 4, 5]
    assert [o.slice_range for o in result.objects] == [(2, 5)]


def test_keep_alive_retires_undetected_objects_so_a_new_detection_can_start_one(present_bundle):
    """Three liver objects start on slice 2 and are never detected again; the echo tracker keeps them present (0.8
    per slice) until slice 6. A fourth liver appears on slice 6. max_objects is 3: without keep-alive the three fading
    objects still hold every place there and the new detection is lost; with keep_alive 1 they end on slice 4."""
    script = {2: [(0, 0.9, (0, 6, 0, 6)), (0, 0.9, (0, 6, 10, 16)), (0, 0.9, (10, 16, 0, 6))],
              6: [(0, 0.9, (20, 28, 20, 28))]}
    options = SegmentOptions(window=WINDOW, threshold=0.5, batch_size=3)

    def run(keep_alive):
        rule = FusionRule(spawn_score=0.5, keep_score=0.3, patience=1, extend_slices=None, keep_alive=keep_alive)
        engine = _engine(present_bundle, script, rule=rule, tracker_factory=EchoTracker)
        return engine.run(_graded_volume(), ["liver"], options)

    new_place = (slice(6, 7), slice(20 * ROWS // 32 + 1, 28 * ROWS // 32 - 1), slice(20 * COLS // 32 + 1, None))
    unlimited = run(None)
    assert len(unlimited.objects) == 3 and not unlimited.labels[new_place].any()  # the detection found no place
    retired = run(1)
    assert len(retired.objects) == 4 and retired.labels[new_place].any()
    assert sorted(o.slice_range for o in retired.objects)[:3] == [(1, 3)] * 3  # seed ± one carried slice


def test_progress_is_monotonic_per_stage_and_stages_in_order(present_bundle):
    events = []
    _engine(present_bundle, {4: [(0, 0.9, (4, 14, 4, 14))]}).run(
        _graded_volume(),
        ["liver"],
        SegmentOptions(window=WINDOW, batch_size=2),
        progress=lambda s, f: events.append((s, f)),
    )
    stages = [s for s, _ in events]
    assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == ["detect", "track", "fuse"]
    for stage in ("detect", "track", "fuse"):
        values = [f for s, f in events if s == stage]
        assert values == sorted(values) and 0.0 <= values[0] and values[-1] == 1.0


def test_cancel_stops_within_one_batch(present_bundle):
    engine = _engine(present_bundle, {4: [(0, 0.9, (4, 14, 4, 14))]})
    token = CancelToken()
    seen = []

    def progress(stage, fraction):
        seen.append(len(engine.detector.encoded))
        if stage == "detect" and fraction > 0:
            token.cancel()

    with pytest.raises(Cancelled):
        options = SegmentOptions(window=WINDOW, batch_size=2)
        engine.run(_graded_volume(), ["liver"], options, progress=progress, cancel=token)
    assert len(engine.detector.encoded) == seen[-1] == 1  # the batch after the cancel was never encoded


def test_streaming_window_and_memory_bank_are_bounded(present_bundle, monkeypatch):
    held, banks = [], []
    original_features = _Sweep._features

    def spy(self, index, direction):
        out = original_features(self, index, direction)
        held.append(len(self.features))
        banks.extend(len(m.recent) for m in self.memories.values())
        return out

    monkeypatch.setattr(_Sweep, "_features", spy)
    script = {k: [(0, 0.9, (4, 14, 4, 14))] for k in range(NUM_SLICES)}
    engine = _engine(present_bundle, script)
    engine.run(_graded_volume(), ["liver"], SegmentOptions(window=WINDOW, batch_size=2, memory_size=3))
    assert held and max(held) <= 2  # one window of batch_size slices
    assert max(banks) <= 2  # memory_size 3 = conditioning + 2 recent
    encoded = [i for batch in engine.detector.encoded for i in batch]
    assert encoded == list(range(NUM_SLICES))  # the ViT runs once per slice: the sweeps read the spilled output


def test_cancel_during_the_sweeps_stops_within_one_window(present_bundle, monkeypatch):
    script = {k: [(0, 0.9, (4, 14, 4, 14))] for k in range(NUM_SLICES)}
    engine = _engine(present_bundle, script)
    token, windows = CancelToken(), []
    original_features = _Sweep._features

    def spy(self, index, direction):
        if index not in self.features:
            windows.append(index)
        return original_features(self, index, direction)

    monkeypatch.setattr(_Sweep, "_features", spy)

    steps = []

    def progress(stage, fraction):
        if stage == "track" and fraction > 0:
            steps.append(fraction)
            if len(steps) == 2:  # on the second slice of the first window
                token.cancel()

    with pytest.raises(Cancelled):
        engine.run(_graded_volume(), ["liver"], SegmentOptions(window=WINDOW, batch_size=2), progress, token)
    assert len(windows) == 2 and len(steps) == 3  # the next window raised before anything was read or tracked


def test_detect_mode_equals_the_2d_detector_slice_by_slice(random_bundle):
    rng = np.random.default_rng(3)
    volume = Volume(rng.normal(50, 20, (5, 20, 26)).astype(np.float32), modality="MR")
    options = SegmentOptions(mode="detect", threshold=0.2, window=(50.0, 80.0), batch_size=3)
    result = VolumeEngine(random_bundle).run(volume, ["liver", "spleen"], options)
    assert result.labels.any()

    detector = Detector(random_bundle)
    text = detector.encode_text(["liver", "spleen"])
    normalize = IntensityNormalizer.for_volume(volume, options.window)
    letterbox = Letterbox(20, 26, random_bundle.image_size)
    for k in range(5):
        pixels = to_model_input(normalize(volume.array[k : k + 1]), letterbox)
        dets = detector.detect(detector.encode_images(pixels), text)
        instances = [(p, inst) for p in range(2) for inst in instances_for(dets, 0, p, letterbox, 0.2)]
        if not instances:
            assert not result.labels[k].any()
            continue
        which, confidence = pixelwise_max_labelmap(
            np.stack([i.probability for _, i in instances]), [i.score for _, i in instances]
        )
        labels = np.where(which > 0, np.array([0] + [p + 1 for p, _ in instances])[which], 0)
        np.testing.assert_array_equal(result.labels[k], labels)
        np.testing.assert_allclose(result.confidence[k], confidence, atol=1e-5)


@pytest.mark.parametrize("mode", ["track", "detect"])
def test_single_slice_and_rgb_image_use_the_same_engine(random_bundle, mode):
    rng = np.random.default_rng(0)
    for array in (rng.normal(0, 1, (1, 18, 22)).astype(np.float32), rng.integers(0, 255, (1, 18, 22, 3), np.uint8)):
        result = VolumeEngine(random_bundle).run(Volume(array), ["lesion"], SegmentOptions(mode=mode, threshold=0.2))
        assert result.labels.shape == (1, 18, 22) and result.confidence.shape == (1, 18, 22)
        assert result.labels.any() and all(o.slice_range == (0, 0) for o in result.objects)


def test_stage_timings_add_up_to_the_total(present_bundle):
    script = {k: [(0, 0.9, (4, 14, 4, 14))] for k in range(NUM_SLICES)}
    result = _engine(present_bundle, script).run(_graded_volume(), ["liver"], SegmentOptions(window=WINDOW))
    stages = {k: v for k, v in result.timings.items() if k != "total"}
    assert {"text", "encode", "heads", "store", "track", "fuse", "cleanup"} <= set(stages)
    assert all(v >= 0 for v in stages.values())
    assert sum(stages.values()) == pytest.approx(result.timings["total"], abs=1e-9)


def test_stage_timer_books_nested_stages_exclusively():
    from medsam3_core.engine.timing import StageTimer

    ticks = iter(range(100))
    timer = StageTimer("cpu", clock=lambda: float(next(ticks)))  # every reading is one second later; other: 0 -> 1
    with timer.stage("a"):  # a: 1 -> 2, b: 2 -> 3, a again: 3 -> 4
        with timer.stage("b"):
            pass
    with timer.stage("b"):  # other: 4 -> 5, b: 5 -> 6
        pass
    assert timer.totals() == {"other": 3.0, "a": 2.0, "b": 2.0, "total": 7.0}  # other again: 6 -> 7


def test_out_of_memory_halves_the_batch_retries_and_says_so(present_bundle):
    script = {k: [(0, 0.9, (4, 14, 4, 14))] for k in (2, 3, 4)}
    options = SegmentOptions(window=WINDOW, batch_size=4)
    fitting = _engine(present_bundle, script).run(
        _graded_volume(), ["liver"], SegmentOptions(window=WINDOW, batch_size=2)
    )
    engine = _engine(present_bundle, script)
    original = engine.detector.encode_images

    def small_memory(pixels):
        if pixels.shape[0] > 2:
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return original(pixels)

    engine.detector.encode_images = small_memory
    result = engine.run(_graded_volume(), ["liver"], options)
    assert result.notes == ["Ran out of device memory with 4 slices per batch; continued with 2."]
    np.testing.assert_array_equal(result.labels, fitting.labels)
    assert [o.slice_range for o in result.objects] == [o.slice_range for o in fitting.objects]


def test_a_single_slice_that_does_not_fit_is_a_clear_error(present_bundle):
    from medsam3_core.engine.batching import fitting_batch_size
    from medsam3_core.errors import ModelError

    engine = _engine(present_bundle, {})

    def never(pixels):
        raise torch.OutOfMemoryError("out of memory (simulated)")

    engine.detector.encode_images = never
    with pytest.raises(ModelError, match="single slice"):
        engine.run(_graded_volume(), ["liver"], SegmentOptions(window=WINDOW, batch_size=3))
    assert fitting_batch_size(8, per_slice_bytes=100, free_bytes=500) == 4  # 80 % of the free memory
    assert fitting_batch_size(8, per_slice_bytes=100, free_bytes=50) == 1
    assert fitting_batch_size(8, per_slice_bytes=0, free_bytes=50) == 8
