"""A slice-indexed store for per-slice tensors that lives in a temporary file, not in memory.

Track mode needs each slice's ViT output twice: in the detection pass and again when the tracker sweeps over the
slice. Running the ViT twice costs as much as the whole detection pass (the ViT is ~90 % of SAM3's compute at
1008²); keeping every slice's output in memory would make memory grow with the number of slices (10 MB per 1008²
slice in bfloat16). :class:`SliceSpill` writes the outputs to an anonymous temporary file with plain reads and
writes — no memory map, so the data sits in the operating system's page cache, reclaimable, instead of in the
process — and reads back only the window the sweep needs.
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["SliceSpill"]

# Stored as raw bytes: bfloat16 has no numpy dtype, so 16-bit floats travel as int16 and are viewed back.
_RAW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


class SliceSpill:
    """Fixed-size records, one per slice index, in a temporary file deleted on :meth:`close` (or process exit).

    Every record has the shape and dtype of the first tensor put; ``get`` returns tensors on ``device``.

    Args:
        num_slices: the slice indices are ``0 … num_slices - 1``.
        directory: where the temporary file goes (default: the system's temporary directory, ``TMPDIR``).
    """

    def __init__(self, num_slices: int, directory: Optional[str] = None) -> None:
        self.num_slices = num_slices
        self._file = tempfile.TemporaryFile(dir=directory)
        self._shape: Optional[tuple[int, ...]] = None
        self._dtype: Optional[torch.dtype] = None
        self._record = 0
        self._written: set[int] = set()

    def put(self, indices: Sequence[int], batch: torch.Tensor) -> None:
        """Store ``batch[i]`` as the record of slice ``indices[i]``."""
        if len(indices) != batch.shape[0]:
            raise ValueError(f"{len(indices)} slice indices for a batch of {batch.shape[0]}")
        if self._shape is None:
            if batch.dtype not in _RAW:
                raise TypeError(f"cannot spill {batch.dtype} tensors")
            self._shape, self._dtype = tuple(batch.shape[1:]), batch.dtype
            self._record = int(np.prod(self._shape)) * batch.element_size()
        elif tuple(batch.shape[1:]) != self._shape or batch.dtype != self._dtype:
            raise ValueError(f"record shape {tuple(batch.shape[1:])} {batch.dtype} != {self._shape} {self._dtype}")
        raw = batch.detach().to("cpu").contiguous().view(_RAW[self._dtype]).numpy()
        for row, index in enumerate(indices):
            self._check(index)
            self._file.seek(index * self._record)
            self._file.write(raw[row].tobytes())
            self._written.add(index)

    def get(self, indices: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """The records of ``indices`` stacked ``(len(indices), *shape)``."""
        missing = [i for i in indices if i not in self._written]
        if missing:
            raise KeyError(f"slices {missing} were never stored")
        out = torch.empty((len(indices), *self._shape), dtype=_RAW[self._dtype])
        view = out.numpy()
        for row, index in enumerate(indices):
            self._file.seek(index * self._record)
            read = self._file.readinto(memoryview(view[row]).cast("B"))
            if read != self._record:
                raise OSError(f"short read from the feature spill file ({read} of {self._record} bytes)")
        return out.view(self._dtype).to(device)

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
