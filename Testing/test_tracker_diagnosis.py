"""Per-organ scores of track vs detect (Dice, false-positive slices, instances), the shipping rule, and the oracle
experiments that split track mode's error into seeding, propagation drift and fusion."""

import numpy as np
import pytest

from training.tracker.compare import organ_scores, track_wins
from training.tracker.diagnose import _seeds, oracle_slice_choice, propagate_seeds, temporal_oracle


def _two_blobs() -> np.ndarray:
    truth = np.zeros((6, 20, 20), bool)
    truth[1:4, 2:6, 2:6] = True
    truth[1:4, 12:16, 12:16] = True
    return truth


def test_organ_scores_count_false_positive_slices_and_instances():
    truth = _two_blobs()
    pred = truth.copy()
    pred[5, 0, 0] = True  # painted where the organ is absent: one false-positive slice, one more instance
    pred[0, 10, 10] = True
    scores = organ_scores(pred, truth)
    assert scores["fp_slices"] == 2 and scores["gt_instances"] == 2 and scores["instances"] == 4
    assert scores["dice"] == pytest.approx(2 * truth.sum() / (2 * truth.sum() + 2))
    # slices along another axis: the same organ seen from the side
    assert organ_scores(np.moveaxis(pred, 0, 2), np.moveaxis(truth, 0, 2), axis=2)["fp_slices"] == 2


def _table(detect_dice, track_dice, detect_fp, track_fp):
    def row(dices, fp):
        return {o: {"dice": d, "fp_slices": fp, "instances": 1.0, "gt_instances": 1.0}
                for o, d in zip(("liver", "kidney"), dices)}

    return {("detect", 0.3): row(detect_dice, detect_fp), ("track", 0.3): row(track_dice, track_fp)}


def test_track_wins_only_with_more_dice_for_every_organ_and_half_the_false_positives():
    assert track_wins(_table((0.8, 0.7), (0.83, 0.72), 4.0, 2.0), 0.3) == (True, [])
    wins, why = track_wins(_table((0.8, 0.7), (0.83, 0.71), 4.0, 2.0), 0.3)
    assert not wins and len(why) == 1 and why[0].startswith("kidney")
    wins, why = track_wins(_table((0.8, 0.7), (0.9, 0.9), 4.0, 2.5), 0.3)
    assert not wins and "false-positive" in why[0]


def test_oracle_slice_choice_takes_the_better_slice_of_either_prediction():
    truth = _two_blobs()
    good_top = truth.copy()
    good_top[4:] = True  # paints absent slices
    good_bottom = np.zeros_like(truth)
    good_bottom[4:] = False
    good_bottom[2] = truth[2]
    chosen = oracle_slice_choice(good_top, good_bottom, truth)
    assert np.array_equal(chosen, truth)


def test_temporal_oracle_fixes_slices_and_components_but_not_outlines():
    truth = _two_blobs()
    pred = truth.copy()
    pred[2, 2:6, 2:4] = False  # an outline error on a present slice: kept
    pred[3] = False  # a missed slice: filled from the truth
    pred[5, 8:10, 8:10] = True  # a false-positive slice: emptied
    pred[1:3, 18:20, 0:2] = True  # a false 3D component on present slices: removed
    fixed = temporal_oracle(pred, truth)
    expected = truth.copy()
    expected[2, 2:6, 2:4] = False
    assert np.array_equal(fixed, expected)
    assert organ_scores(fixed, truth)["fp_slices"] == 0


def test_seeds_take_each_component_on_its_largest_slice_from_the_source():
    truth = _two_blobs()
    truth[2, 2:8, 2:8] = True  # the first blob is largest on slice 2
    seeds = _seeds(truth, truth)
    assert [k for k, _ in seeds] == [2, 1] and seeds[0][1].sum() == 36
    missed = truth.copy()
    missed[:, 10:, 10:] = False  # a source that misses the second blob seeds only the first
    assert len(_seeds(truth, missed)) == 1


def test_propagate_seeds_paints_the_seed_slice_and_runs_both_ways(random_bundle):
    from medsam3_core.io.geometry import Volume

    truth = _two_blobs()
    volume = Volume(np.where(truth, 200.0, -1000.0).astype(np.float32), (2.0, 2.0, 5.0), modality="CT")
    seeds = _seeds(truth, truth)
    paths = propagate_seeds(random_bundle, volume, seeds)
    assert len(paths) == 2 and all(p.shape == truth.shape and p.dtype == bool for p in paths)
    for (k, mask), path in zip(seeds, paths):
        assert np.array_equal(path[k], mask)
