"""A slice-indexed store for per-slice tensors that lives in a temporary file, not in memory.

Track mode needs each slice's image features twice: in the detection pass and again when the tracker sweeps over
the slice (twice for slices both sweeps visit). Recomputing them means running the ViT again, which costs as much as
the whole detection pass (the ViT is ~90 % of SAM3's compute at 1008²); keeping every slice's features in memory
would make memory grow with the number of slices (10 MB per 1008² slice in bfloat16). :class:`SliceSpill` writes
them to an anonymous temporary file with plain reads and writes — no memory map, so the data sits in the operating
system's page cache, reclaimable, instead of in the process — and reads back only the window the sweep needs.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence, Union

import torch

from medsam3_core.errors import MedSam3Error

__all__ = ["SliceSpill"]

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
