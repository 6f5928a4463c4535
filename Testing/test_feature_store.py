"""Feature store: per-slice tensors round-trip through every tier (device, host, temporary file) bit for bit, a
budget too small for the volume falls back to the next tier, the engine gives the same label maps whatever the tier,
and bad use is a clear error."""

import numpy as np
import pytest
import torch

from medsam3_core.engine.feature_store import FeatureStore, SliceSpill, StoreBudget
from medsam3_core.engine.volume_engine import VolumeEngine
from medsam3_core.errors import MedSam3Error
from medsam3_core.io.geometry import Volume
from medsam3_core.segmenter import SegmentOptions


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_records_round_trip_bit_for_bit_in_any_order(dtype):
    data = torch.randn(6, 5, 3).to(dtype)
    with SliceSpill(6) as spill:
        spill.put([4, 5], data[4:6])
        spill.put([0, 1, 2, 3], data[:4])
        assert spill.bytes_on_disk == 6 * 5 * 3 * data.element_size()  # on disk, not held by the object
        (back,) = spill.get([5, 0, 3])
    assert back.dtype == dtype and torch.equal(back, data[[5, 0, 3]])


def test_a_record_can_hold_several_tensors_of_different_shapes_and_dtypes():
    top, level = torch.randn(3, 4, 2), torch.randn(3, 1, 5, 5).to(torch.bfloat16)
    with SliceSpill(3) as spill:
        spill.put([2, 0, 1], top, level)
        got_top, got_level = spill.get([0, 2])
    assert torch.equal(got_top, top[[1, 0]]) and torch.equal(got_level, level[[1, 0]])


def test_rewriting_a_slice_replaces_it():
    with SliceSpill(2) as spill:
        spill.put([0, 1], torch.zeros(2, 4))
        spill.put([1], torch.ones(1, 4))
        assert torch.equal(spill.get([0, 1])[0], torch.tensor([[0.0] * 4, [1.0] * 4]))


def test_bad_use_is_a_clear_error():
    with SliceSpill(3) as spill:
        spill.put([0], torch.zeros(1, 2))
        with pytest.raises(KeyError, match="never stored"):
            spill.get([0, 2])
        with pytest.raises(IndexError, match="outside"):
            spill.put([3], torch.zeros(1, 2))
        with pytest.raises(ValueError, match="layout"):
            spill.put([1], torch.zeros(1, 3))
        with pytest.raises(ValueError, match="layout"):
            spill.put([1], torch.zeros(1, 2), torch.zeros(1, 2))
        with pytest.raises(ValueError, match="indices"):
            spill.put([1, 2], torch.zeros(1, 2))
    with SliceSpill(1) as spill, pytest.raises(TypeError, match="spill"):
        spill.put([0], torch.zeros(1, 2, dtype=torch.int64))


def test_a_full_disk_is_a_clear_error(monkeypatch):
    with SliceSpill(2) as spill:
        def no_space(data):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(spill._file, "write", no_space)
        with pytest.raises(MedSam3Error, match="TMPDIR"):
            spill.put([0], torch.zeros(1, 4))


def _record_bytes(*parts):
    return sum(part[0].numel() * part.element_size() for part in parts)


@pytest.mark.parametrize("budget", ["device", "host", "file", "mixed"])
def test_every_tier_returns_the_records_bit_for_bit(budget):
    top, level = torch.randn(6, 4, 3), torch.randn(6, 2, 5, 5).to(torch.bfloat16)
    size = _record_bytes(top, level)
    budgets = {"device": StoreBudget(10 * size, 0), "host": StoreBudget(0, 10 * size), "file": StoreBudget(0, 0),
               "mixed": StoreBudget(2 * size, 2 * size)}
    with FeatureStore(6, "cpu", budgets[budget]) as store:
        store.put([3, 4, 5], top[3:], level[3:])
        store.put([0, 1, 2], top[:3], level[:3])
        store.put([1], top[1:2] * 0, level[1:2] * 0)  # a rewrite replaces the record in its tier
        got_top, got_level = store.get([5, 0, 1, 3])
        counts = store.tier_counts
    expected = {"device": {"device": 6, "host": 0, "file": 0}, "host": {"device": 0, "host": 6, "file": 0},
                "file": {"device": 0, "host": 0, "file": 6}, "mixed": {"device": 2, "host": 2, "file": 2}}
    assert counts == expected[budget]
    assert torch.equal(got_top[[0, 1, 3]], top[[5, 0, 3]]) and torch.equal(got_level[[0, 1, 3]], level[[5, 0, 3]])
    assert not got_top[2].any() and got_level.dtype == torch.bfloat16


def test_cpu_default_budget_keeps_todays_file_spill():
    assert StoreBudget.for_device("cpu") == StoreBudget(0, 0)


def test_store_errors_are_clear():
    with FeatureStore(2, "cpu", StoreBudget(10**6, 0)) as store:
        store.put([0], torch.zeros(1, 2))
        with pytest.raises(KeyError, match="never stored"):
            store.get([1])
        with pytest.raises(IndexError, match="outside"):
            store.put([2], torch.zeros(1, 2))
        with pytest.raises(ValueError, match="layout"):
            store.put([1], torch.zeros(1, 3))


def test_resident_pinned_and_spilled_stores_give_bitwise_equal_label_maps(tracking_bundle, monkeypatch):
    tiers = []
    original_close = FeatureStore.close

    def spy(self):
        tiers.append(self.tier_counts)
        original_close(self)

    monkeypatch.setattr(FeatureStore, "close", spy)
    rng = np.random.default_rng(5)
    volume = Volume(rng.normal(60, 25, (8, 26, 30)).astype(np.float32), modality="MR")
    options = SegmentOptions(threshold=0.12, window=(60.0, 100.0), batch_size=3)
    results = {}
    for name, budget in {"device": StoreBudget(1 << 30, 0), "host": StoreBudget(0, 1 << 30),
                         "file": StoreBudget(0, 0), "too small": StoreBudget(300_000, 300_000)}.items():
        engine = VolumeEngine(tracking_bundle, max_objects=3, store_budget=budget)
        results[name] = engine.run(volume, ["liver", "spleen"], options)
    assert tiers[0] == {"device": 8, "host": 0, "file": 0} and tiers[1] == {"device": 0, "host": 8, "file": 0}
    assert tiers[2] == {"device": 0, "host": 0, "file": 8}
    assert all(tiers[3].values()) and sum(tiers[3].values()) == 8  # too small: spread over all three, no error
    reference = results["file"]
    assert reference.labels.any() and reference.objects
    for name, result in results.items():
        np.testing.assert_array_equal(result.labels, reference.labels, err_msg=name)
        np.testing.assert_array_equal(result.confidence, reference.confidence, err_msg=name)
        assert [(o.object_id, o.voxels) for o in result.objects] == [(o.object_id, o.voxels) for o in reference.objects]
