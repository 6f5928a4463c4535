"""Slices per batch from the device's free memory, and halving the batch when the device runs out of memory.

The requested batch size (``SegmentOptions.batch_size``) is an upper bound. On a GPU the first batch measures the
peak memory one slice needs; the following batches take at most as many slices as fit in 80 % of the memory then
free. Should a batch still run out of memory (another process took memory, or a prompt produced many objects), the
batch is split in half and retried, the smaller size is kept for the rest of the run, and the report says so.
Nothing of a failed batch is kept: it is encoded again from the start. One slice that does not fit is an error with
a clear message. On the CPU the requested size is used as is.
"""

from __future__ import annotations

from typing import Callable

import torch

from medsam3_core.engine.run_context import RunContext
from medsam3_core.errors import ModelError
from medsam3_core.progress import report

__all__ = ["for_each_batch", "fitting_batch_size"]

#: Share of free device memory a batch may plan to use.
FREE_SHARE = 0.8


def fitting_batch_size(requested: int, per_slice_bytes: int, free_bytes: int) -> int:
    """The largest batch of at most ``requested`` slices whose estimated peak fits in the free memory (≥ 1)."""
    if per_slice_bytes <= 0:
        return requested
    return max(1, min(requested, int(free_bytes * FREE_SHARE) // per_slice_bytes))


def for_each_batch(ctx: RunContext, stage: str, process: Callable[[list[int]], None]) -> None:
    """Call ``process(batch)`` for consecutive batches of slice indices covering the volume, reporting progress of
    ``stage`` before each batch; sizes follow the module docstring (``ctx.batch_size`` is updated)."""
    cuda = ctx.bundle.device.type == "cuda"
    start, measured = 0, not cuda
    while start < ctx.num_slices:
        report(ctx.progress, stage, start / ctx.num_slices)
        batch = list(range(start, min(start + ctx.batch_size, ctx.num_slices)))
        if not measured:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        try:
            process(batch)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise ModelError(
                    "The device ran out of memory on a single slice; free device memory or run with --device cpu."
                ) from None
            ctx.batch_size = max(1, len(batch) // 2)
            if cuda:
                torch.cuda.empty_cache()
            ctx.notes.append(
                f"Ran out of device memory with {len(batch)} slices per batch; continued with {ctx.batch_size}."
            )
            continue
        if not measured:
            measured = True
            per_slice = (torch.cuda.max_memory_allocated() - before) // len(batch)
            free, _ = torch.cuda.mem_get_info(ctx.bundle.device)
            ctx.batch_size = fitting_batch_size(ctx.batch_size, per_slice, free)
        start += len(batch)
    report(ctx.progress, stage, 1.0)
