"""The detector/tracker fusion rule and the track life cycle, on hand-made masks (no model)."""

import numpy as np
import pytest

from medsam3_core.engine.fusion import FusionRule, TrackBook, fuse_slice, mask_iou, match_by_iou

RULE = FusionRule(match_iou=0.3, spawn_score=0.5, keep_score=0.5, patience=2, absorb_fraction=0.5)
SIDE = 16


def box(y0, y1, x0, x1, p=0.9):
    """A probability map that is ``p`` inside the box and 0.05 outside."""
    m = np.full((SIDE, SIDE), 0.05, np.float32)
    m[y0:y1, x0:x1] = p
    return m


def stack(*maps):
    return np.stack(maps) if maps else np.zeros((0, SIDE, SIDE), np.float32)


def test_mask_iou_and_matching():
    a = stack(box(0, 4, 0, 4), box(8, 12, 8, 12)) > 0.5
    b = stack(box(8, 12, 8, 12), box(0, 4, 0, 2)) > 0.5
    iou = mask_iou(a, b)
    np.testing.assert_allclose(iou, [[0.0, 0.5], [1.0, 0.0]])
    assert match_by_iou(iou, 0.3) == {0: 1, 1: 0}
    assert match_by_iou(iou, 0.6) == {1: 0}
    assert mask_iou(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4), bool))[0, 0] == 0.0


def test_matched_pair_is_confidence_weighted_and_keeps_the_better_score():
    track, det = box(2, 10, 2, 10, p=0.6), box(2, 10, 2, 10, p=1.0)
    averaging = FusionRule(match_iou=0.3, spawn_score=0.5, keep_score=0.5, recondition_iou=None)
    out = fuse_slice(stack(track), [1.0], [0.9], stack(det), [0.6], averaging)
    assert out.matches == {0: 0} and out.spawn == []
    expected = (0.6 * 1.0 + 0.9 * 0.6) / (0.6 + 0.9)
    assert out.probs[0, 5, 5] == pytest.approx(expected)
    assert out.scores[0] == pytest.approx(0.9) and out.present[0]


def test_confident_match_reconditions_the_object_with_the_detection_mask():
    """At IoU ≥ recondition_iou the detection's mask replaces the drifting tracker mask; a looser match (IoU between
    match_iou and recondition_iou) is still averaged."""
    track, det = box(2, 10, 2, 10, p=0.6), box(2, 10, 3, 10, p=1.0)  # IoU 56/64
    out = fuse_slice(stack(track), [1.0], [0.9], stack(det), [0.6], RULE)
    assert out.matches == {0: 0}
    np.testing.assert_array_equal(out.probs[0].numpy(), det)
    assert out.scores[0] == pytest.approx(0.9)
    loose = box(2, 10, 6, 14, p=1.0)  # IoU 32/96 = 0.33: matched, not reconditioned
    out = fuse_slice(stack(track), [1.0], [0.9], stack(loose), [0.6], RULE)
    assert out.matches == {0: 0}
    assert out.probs[0, 5, 8] == pytest.approx((0.6 * 1.0 + 0.9 * 0.6) / 1.5)


def test_a_spread_tracker_mask_is_reconditioned_by_the_small_detection_inside_it():
    """The tracker's mask has spread over most of the slice; the detection inside it (IoU 16/196, no match) is
    absorbed and, reconditioning, becomes the object's mask. Averaging rule: the spread mask stays (pixel max)."""
    spread, small = box(0, 14, 0, 14), box(4, 8, 4, 8)
    out = fuse_slice(stack(spread), [0.9], [0.9], stack(small), [0.6], RULE)
    assert out.matches == {} and out.absorbed == {0: 0} and out.spawn == []
    np.testing.assert_array_equal(out.probs[0].numpy(), small)
    averaging = FusionRule(match_iou=0.3, spawn_score=0.5, keep_score=0.5, recondition_iou=None)
    out = fuse_slice(stack(spread), [0.9], [0.9], stack(small), [0.6], averaging)
    np.testing.assert_array_equal(out.probs[0].numpy(), np.maximum(spread, small))


def test_unmatched_track_decays_with_tracker_presence_and_new_object_appears():
    out = fuse_slice(stack(box(0, 4, 0, 4)), [0.8], [0.9], stack(box(10, 14, 10, 14)), [0.7], RULE)
    assert out.matches == {} and out.spawn == [0]
    assert out.scores[0] == pytest.approx(0.72) and out.present[0]
    np.testing.assert_array_equal(out.spawn_probs[0], box(10, 14, 10, 14))


def test_object_vanishes_when_tracker_loses_it():
    out = fuse_slice(stack(box(0, 4, 0, 4)), [0.3], [0.9], stack(), np.zeros(0), RULE)
    assert not out.present[0] and out.scores[0] == pytest.approx(0.27)


def test_split_object_keeps_one_identity():
    """A track covering two pieces matches the larger one and absorbs the other instead of starting an object."""
    track = box(2, 12, 2, 14)
    left, right = box(2, 12, 2, 7), box(2, 12, 9, 14)
    out = fuse_slice(stack(track), [0.9], [0.9], stack(left, right), [0.8, 0.7], RULE)
    assert len(out.matches) == 1 and out.spawn == []
    assert set(out.absorbed) == {1 - out.matches[0]} and list(out.absorbed.values()) == [0]


def test_duplicate_detections_start_one_object():
    a, b = box(2, 10, 2, 10), box(2, 10, 3, 10, p=0.8)
    out = fuse_slice(stack(), np.zeros(0), np.zeros(0), stack(a, b), [0.6, 0.9], RULE)
    assert out.spawn == [1] and len(out.spawn_probs) == 1
    np.testing.assert_array_equal(out.spawn_probs[0], np.maximum(a, b))


def test_weak_detection_does_not_start_an_object():
    out = fuse_slice(stack(), np.zeros(0), np.zeros(0), stack(box(2, 6, 2, 6)), [0.4], RULE)
    assert out.spawn == []


def test_overlapping_prompts_are_fused_separately():
    """Fusion is per prompt: a liver track and an overlapping tumour detection are independent calls, so the
    tumour detection is not swallowed by the liver track when it is fused with its own (empty) track list."""
    tumour = box(4, 8, 4, 8)
    liver_out = fuse_slice(stack(box(0, 14, 0, 14)), [0.9], [0.9], stack(), np.zeros(0), RULE)
    tumour_out = fuse_slice(stack(), np.zeros(0), np.zeros(0), stack(tumour), [0.8], RULE)
    assert liver_out.present[0] and tumour_out.spawn == [0]


def test_track_life_cycle_ids_patience_and_resume():
    book = TrackBook(patience=2)
    a, b = book.start(0, 5, 0.9), book.start(1, 5, 0.7)
    assert (a.track_id, b.track_id) == (1, 2)
    book.record(a, 6, 0.8, True)
    book.record(a, 7, 0.3, False)
    assert a.active  # one doubtful slice does not end an object
    book.record(a, 8, 0.6, True)
    book.record(a, 9, 0.2, False)
    book.record(a, 10, 0.1, False)
    assert not a.active and book.live() == [b] and book.live(prompt=0) == []
    assert a.slice_range == (5, 8) and a.score == pytest.approx(0.9)
    assert a.slice_scores == {5: 0.9, 6: 0.8, 8: 0.6}
    book.resume_from_seed(a)
    assert a.active and a.misses == 0 and a.confidence == pytest.approx(0.9)
    assert book.start(0, 2, 0.8).track_id == 3


def test_confirmation_drops_lone_detections_and_trims_tracker_only_ends():
    """Rule 6: an object supported by one detection is dropped; tracker-only slices beyond the first/last detected
    slice are kept up to extend_slices; gaps between detected slices stay."""
    book = TrackBook(patience=3)
    lone = book.start(0, 5, 0.6)
    book.record(lone, 6, 0.4, True)  # carried by the tracker only
    organ = book.start(0, 10, 0.9)
    for k, detected in [(11, True), (12, False), (13, True), (14, False), (15, False), (16, False)]:
        book.record(organ, k, 0.7, True, detected=detected)
    book.record(organ, 9, 0.5, True)  # tracker-only, below the seed
    book.record(organ, 8, 0.5, True)
    removed = book.unconfirmed_slices(FusionRule(min_detections=2, extend_slices=1), 20)
    assert removed == {lone.track_id: [5, 6], organ.track_id: [8, 15, 16]}
    assert lone.slice_scores == {} and sorted(organ.slice_scores) == [9, 10, 11, 12, 13, 14]
    assert organ.detected == {10, 11, 13}
    book2 = TrackBook(patience=3)
    kept = book2.start(0, 5, 0.6)
    book2.record(kept, 6, 0.4, True)
    assert book2.unconfirmed_slices(FusionRule(min_detections=1, extend_slices=None), 20) == {}
    assert sorted(kept.slice_scores) == [5, 6]
    single = TrackBook(patience=1)
    image = single.start(0, 0, 0.6)
    assert single.unconfirmed_slices(FusionRule(min_detections=2), 1) == {}  # a 2D image: one slice is all there is
    assert image.slice_scores == {0: 0.6}


def test_a_detection_on_an_absent_object_does_not_confirm_it():
    book = TrackBook(patience=2)
    track = book.start(0, 0, 0.9)
    book.record(track, 1, 0.1, False, detected=True)
    assert track.detected == {0}


def test_rule_validation():
    with pytest.raises(ValueError):
        FusionRule(patience=0)
    with pytest.raises(ValueError):
        FusionRule(match_iou=1.5)
    with pytest.raises(ValueError):
        FusionRule(recondition_iou=-0.1)
    with pytest.raises(ValueError):
        FusionRule(min_detections=0)
    with pytest.raises(ValueError):
        FusionRule(extend_slices=-1)
    with pytest.raises(ValueError):
        FusionRule(keep_alive=-1)


# -- the torch implementation against the former numpy one (fusion_reference.py) -------------------------------------
def _random_case(rng, num_tracks, num_dets):
    """Overlapping random boxes with soft edges, so matches, absorptions, duplicates and spawns all occur."""
    def maps(n):
        out = np.full((n, SIDE, SIDE), 0.02, np.float32)
        for m in out:
            y0, x0 = rng.integers(0, SIDE - 4, 2)
            y1, x1 = y0 + rng.integers(2, 9), x0 + rng.integers(2, 9)
            m[y0:y1, x0:x1] = rng.uniform(0.3, 1.0, (min(y1, SIDE) - y0, min(x1, SIDE) - x0))
        return out

    return (maps(num_tracks), rng.uniform(0, 1, num_tracks).astype(np.float32), rng.uniform(0, 1, num_tracks).tolist(),
            maps(num_dets), rng.uniform(0, 1, num_dets).astype(np.float32))


@pytest.mark.parametrize("seed", range(40))
def test_torch_fusion_equals_the_numpy_rule(seed):
    import fusion_reference

    rng = np.random.default_rng(seed)
    case = _random_case(rng, int(rng.integers(0, 4)), int(rng.integers(0, 5)))
    rule = FusionRule(match_iou=0.2, spawn_score=float(rng.uniform(0, 0.6)), keep_score=float(rng.uniform(0, 0.6)),
                      absorb_fraction=float(rng.uniform(0.3, 0.7)), recondition_iou=None)
    old = fusion_reference.fuse_slice(*case, rule)
    new = fuse_slice(*case, rule)
    assert new.matches == old["matches"] and new.absorbed == old["absorbed"] and new.spawn == old["spawn"]
    np.testing.assert_array_equal(new.probs.numpy(), old["probs"])
    np.testing.assert_array_equal(new.scores.numpy(), old["scores"])
    np.testing.assert_array_equal(new.present.numpy(), old["present"])
    np.testing.assert_array_equal(new.spawn_probs.numpy().reshape(old["spawn_probs"].shape), old["spawn_probs"])
    tracks, dets = case[0] > 0.5, case[3] > 0.5
    np.testing.assert_array_equal(mask_iou(tracks, dets).numpy(), fusion_reference.mask_iou(tracks, dets))


@pytest.mark.parametrize("seed", range(10))
def test_painting_all_objects_at_once_equals_painting_them_one_by_one(seed):
    import fusion_reference
    import torch

    from medsam3_core.engine.canvas import Canvas

    rng = np.random.default_rng(seed)
    probs = rng.choice([0.2, 0.6, 0.8, 1.0], (5, 7, 9)).astype(np.float32)  # ties between objects on purpose
    scores = rng.choice([0.5, 0.8, 1.0], 5).tolist()
    ids = [3, 1, 4, 2, 5]
    canvas = Canvas((2, 7, 9))
    canvas.confidence[1] = torch.from_numpy(rng.choice([0.0, 0.5], (7, 9)).astype(np.float32))
    confidence, owner = canvas.confidence[1].numpy().copy(), np.zeros((7, 9), np.int32)
    canvas.paint(1, torch.from_numpy(probs[:2]), scores[:2], ids[:2])
    canvas.paint(1, torch.from_numpy(probs[2:]), scores[2:], ids[2:])
    fusion_reference.paint_sequentially(confidence, owner, probs, scores, ids)
    got_owner, got_confidence = canvas.to_host()
    np.testing.assert_array_equal(got_owner[1], owner)
    np.testing.assert_array_equal(got_confidence[1], confidence)
    assert not got_owner[0].any()


def test_canvas_ids_widen_beyond_16_bits():
    import torch

    from medsam3_core.engine.canvas import Canvas

    canvas = Canvas((1, 2, 2))
    probs = torch.tensor([[[0.9, 0.1], [0.9, 0.9]], [[0.1, 0.9], [0.1, 0.1]]])
    canvas.paint(0, probs, [0.5, 0.7], [7, 40_000])
    owner, confidence = canvas.to_host()
    np.testing.assert_array_equal(owner[0], [[7, 40_000], [7, 7]])
    np.testing.assert_allclose(confidence[0], [[0.45, 0.63], [0.45, 0.45]], rtol=1e-6)
    assert canvas.covered_by(0, torch.tensor([[True, True], [False, False]]), {40_000}) == 0.5
