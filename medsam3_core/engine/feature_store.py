"""Per-slice features kept between the engine's passes: on the device while they fit, then in (pinned) host
memory, then in a temporary file.

Track mode needs each slice's tracker features twice: in the detection pass and again when the tracker sweeps over
the slice (twice for slices both sweeps visit); a volume session needs the ViT's output again for every new prompt.
Recomputing them means running the ViT again, which costs as much as the whole detection pass (the ViT is ~90 % of
SAM3's compute at 1008²). :class:`FeatureStore` keeps each slice's record in the first of three tiers with room:

1. **device** — tensors stay where they were computed (no copy at all; on a GPU this is what removes the
   device → host → file → host → device round trip of every slice);
2. **host** — host memory, page-locked (pinned) when the device is a GPU so the copy back is fast;
3. **file** — :class:`SliceSpill`, an anonymous temporary file written with plain reads and writes (no memory map),
   so the data sits in the operating system's page cache, reclaimable, instead of in the process.

The budgets of the first two tiers come from :meth:`StoreBudget.for_device`. On a GPU: half of the device memory
free when the store is made, and a quarter of the host memory available. On the CPU both are **zero**, so every
record goes to the file, as before: there the "device" *is* host memory, whose growth with the number of slices the
streaming design exists to avoid, and the page cache already keeps a small volume's file in memory without holding
it in the process. A budget too small for the volume is not an error: the records that do not fit go to the next
tier. Every tier returns the very bits that were put, so the tier never changes a result.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from medsam3_core.errors import MedSam3Error

__all__ = ["FeatureStore", "SliceSpill", "StoreBudget"]

#: Shares of free device memory and available host memory a store may fill by default (module docstring).
DEVICE_SHARE = 0.5
HOST_SHARE = 0.25

# Stored as raw bytes: bfloat16 has no numpy dtype, so 16-bit floats travel as int16 and are viewed back.
_RAW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


class SliceSpill:
    """Fixed-size records, one per slice index, in a temporary file deleted on :meth:`close` (or process exit).

    A record is one or more tensors ("parts"); every record has the parts, shapes and dtypes of the first one put.

    Args:
        num_slices: the slice indices are ``0 … num_slices - 1``. The file goes to the system's temporary directory
            (``TMPDIR``).
    """

    def __init__(self, num_slices: int) -> None:
        self.num_slices = num_slices
        self._file = tempfile.TemporaryFile()
        self._layout: Optional[list[tuple[tuple[int, ...], torch.dtype, int]]] = None  # per part: shape, dtype, bytes
        self._record = 0
        self._written: set[int] = set()

    def put(self, indices: Sequence[int], *parts: torch.Tensor) -> None:
        """Store ``(parts[0][i], parts[1][i], …)`` as the record of slice ``indices[i]``."""
        if not parts or any(len(indices) != part.shape[0] for part in parts):
            raise ValueError(f"{len(indices)} slice indices for batches of {[part.shape[0] for part in parts]}")
        layout = [(tuple(part.shape[1:]), part.dtype, part[0].numel() * part.element_size()) for part in parts]
        if self._layout is None:
            unsupported = [part.dtype for part in parts if part.dtype not in _RAW]
            if unsupported:
                raise TypeError(f"cannot spill {unsupported[0]} tensors")
            self._layout, self._record = layout, sum(size for _, _, size in layout)
        elif layout != self._layout:
            raise ValueError(f"record layout {layout} differs from the first record's {self._layout}")
        raws = [part.detach().to("cpu").contiguous().view(_RAW[part.dtype]).numpy() for part in parts]
        for row, index in enumerate(indices):
            self._check(index)
            self._file.seek(index * self._record)
            try:
                for raw in raws:
                    self._file.write(raw[row].tobytes())
                self._file.flush()
            except OSError as exc:
                raise MedSam3Error(
                    f"Could not write the slice features to a temporary file in {tempfile.gettempdir()} ({exc}). "
                    f"Track mode needs about {self._record * self.num_slices / 2**30:.1f} GB there: free space or "
                    "point TMPDIR at a larger disk."
                ) from exc
            self._written.add(index)

    def get(self, indices: Sequence[int], device: Union[torch.device, str] = "cpu") -> list[torch.Tensor]:
        """The records of ``indices``: one ``(len(indices), *shape)`` tensor per part."""
        missing = [i for i in indices if i not in self._written]
        if missing:
            raise KeyError(f"slices {missing} were never stored")
        outs = [torch.empty((len(indices), *shape), dtype=_RAW[dtype]) for shape, dtype, _ in self._layout]
        for row, index in enumerate(indices):
            self._file.seek(index * self._record)
            for out in outs:
                target = memoryview(out[row].numpy()).cast("B")
                read = self._file.readinto(target)
                if read != len(target):
                    raise OSError(f"short read from the spill file ({read} of {len(target)} bytes)")
        return [out.view(dtype).to(device) for out, (_, dtype, _) in zip(outs, self._layout)]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "SliceSpill":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check(self, index: int) -> None:
        if not 0 <= index < self.num_slices:
            raise IndexError(f"slice {index} outside 0 … {self.num_slices - 1}")

    @property
    def bytes_on_disk(self) -> int:
        return os.fstat(self._file.fileno()).st_size


def _available_host_bytes() -> int:
    """``MemAvailable`` from /proc/meminfo (0 where it cannot be read: then nothing is kept in host memory)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class StoreBudget:
    """Bytes a :class:`FeatureStore` may keep on the device and in host memory; the rest goes to the file."""

    device_bytes: int = 0
    host_bytes: int = 0

    @classmethod
    def for_device(cls, device: Union[torch.device, str]) -> "StoreBudget":
        """The default budget (module docstring): shares of free memory on a GPU, nothing resident on the CPU."""
        device = torch.device(device)
        if device.type != "cuda":
            return cls(0, 0)
        free, _ = torch.cuda.mem_get_info(device)
        return cls(int(free * DEVICE_SHARE), int(_available_host_bytes() * HOST_SHARE))


class _ResidentTier:
    """Records held as tensors (on the device, or in host memory), up to a byte budget."""

    def __init__(self, capacity: int, device: Optional[torch.device], pin: bool) -> None:
        self.capacity, self.device, self.pin = capacity, device, pin
        self.used = 0
        self.records: dict[int, list[torch.Tensor]] = {}

    def room_for(self, size: int) -> bool:
        return self.used + size <= self.capacity

    def put(self, index: int, parts: list[torch.Tensor], size: int) -> None:
        if index not in self.records:
            self.used += size
        if self.device is not None:  # stays where it was computed: a copy of the row, not a view of the batch
            self.records[index] = [part.detach().clone() for part in parts]
        else:  # page-locked when the device is a GPU, so the copy back can run asynchronously
            self.records[index] = [
                torch.empty(part.shape, dtype=part.dtype, pin_memory=self.pin).copy_(part.detach()) for part in parts
            ]


class FeatureStore:
    """Fixed-layout per-slice records in three tiers (module docstring); ``get`` returns them on any device.

    Args:
        num_slices: the slice indices are ``0 … num_slices - 1``.
        device: where the engine computes (the device tier keeps records there).
        budget: bytes for the device and host tiers; :meth:`StoreBudget.for_device` when ``None``.
    """

    def __init__(self, num_slices: int, device: Union[torch.device, str] = "cpu",
                 budget: Optional[StoreBudget] = None) -> None:
        self.num_slices = num_slices
        self.device = torch.device(device)
        budget = budget if budget is not None else StoreBudget.for_device(self.device)
        self._device_tier = _ResidentTier(budget.device_bytes, self.device, pin=False)
        self._host_tier = _ResidentTier(budget.host_bytes, None, pin=self.device.type == "cuda")
        self._spill: Optional[SliceSpill] = None
        self._where: dict[int, str] = {}
        self._layout: Optional[list[tuple[tuple[int, ...], torch.dtype]]] = None

    def put(self, indices: Sequence[int], *parts: torch.Tensor) -> None:
        """Store ``(parts[0][i], parts[1][i], …)`` as the record of slice ``indices[i]`` (in the first tier with room;
        a slice stored again stays in its tier)."""
        if not parts or any(len(indices) != part.shape[0] for part in parts):
            raise ValueError(f"{len(indices)} slice indices for batches of {[part.shape[0] for part in parts]}")
        layout = [(tuple(part.shape[1:]), part.dtype) for part in parts]
        if self._layout is None:
            self._layout = layout
        elif layout != self._layout:
            raise ValueError(f"record layout {layout} differs from the first record's {self._layout}")
        size = sum(part[0].numel() * part.element_size() for part in parts)
        to_file: list[int] = []
        for row, index in enumerate(indices):
            if not 0 <= index < self.num_slices:
                raise IndexError(f"slice {index} outside 0 … {self.num_slices - 1}")
            tier = self._where.get(index) or self._tier_for(size)
            self._where[index] = tier
            if tier == "file":
                to_file.append(row)
            else:
                self._tiers()[tier].put(index, [part[row] for part in parts], size)
        if to_file:
            if self._spill is None:
                self._spill = SliceSpill(self.num_slices)
            rows = torch.tensor(to_file, device=parts[0].device)
            self._spill.put([indices[r] for r in to_file], *(part.index_select(0, rows) for part in parts))

    def get(self, indices: Sequence[int], device: Union[torch.device, str, None] = None) -> list[torch.Tensor]:
        """The records of ``indices``: one ``(len(indices), *shape)`` tensor per part, on ``device`` (default: the
        store's)."""
        device = torch.device(device) if device is not None else self.device
        missing = [i for i in indices if i not in self._where]
        if missing:
            raise KeyError(f"slices {missing} were never stored")
        file_rows = [row for row, index in enumerate(indices) if self._where[index] == "file"]
        from_file = self._spill.get([indices[r] for r in file_rows], device) if file_rows else []
        if len(file_rows) == len(indices) and file_rows:
            return from_file  # all from the file (the CPU default): already batched
        file_row = {row: n for n, row in enumerate(file_rows)}
        outs = []
        for part, (shape, dtype) in enumerate(self._layout):
            rows = []
            for row, index in enumerate(indices):
                tier = self._where[index]
                if tier == "file":
                    rows.append(from_file[part][file_row[row]])
                else:
                    rows.append(self._tiers()[tier].records[index][part].to(device, non_blocking=True))
            outs.append(torch.stack(rows) if rows else torch.empty((0, *shape), dtype=dtype, device=device))
        return outs

    def __contains__(self, index: int) -> bool:
        return index in self._where

    @property
    def nbytes(self) -> dict[str, int]:
        """Bytes held per tier (``device``, ``host``, ``file``)."""
        return {"device": self._device_tier.used, "host": self._host_tier.used,
                "file": self._spill.bytes_on_disk if self._spill is not None else 0}

    @property
    def tier_counts(self) -> dict[str, int]:
        """How many slices each tier holds (``device``, ``host``, ``file``)."""
        counts = {"device": 0, "host": 0, "file": 0}
        for tier in self._where.values():
            counts[tier] += 1
        return counts

    def close(self) -> None:
        """Free every tier (the file is deleted)."""
        if self._spill is not None:
            self._spill.close()
            self._spill = None
        for tier in self._tiers().values():
            tier.records.clear()
            tier.used = 0
        self._where.clear()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tiers(self) -> dict[str, _ResidentTier]:
        return {"device": self._device_tier, "host": self._host_tier}

    def _tier_for(self, size: int) -> str:
        if self._device_tier.room_for(size):
            return "device"
        if self._host_tier.room_for(size):
            return "host"
        return "file"
