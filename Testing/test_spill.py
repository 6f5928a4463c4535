"""SliceSpill: per-slice tensors round-trip through a temporary file, bit for bit, with clear errors."""

import pytest
import torch

from medsam3_core.errors import MedSam3Error
from medsam3_core.engine.feature_store import SliceSpill


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
