"""Per-stage timings that add up to the run's total, right on every device.

Why not ``clock()`` around each stage: on a GPU the host only queues work, so a host clock books the queued work to
whichever stage happens to wait for it first (typically a copy to the host), and the stage figures say nothing about
where the time went. :class:`StageTimer` instead cuts the run into consecutive intervals, each booked to exactly one
stage: on CUDA the interval boundaries are CUDA events on the current stream (the device's own timeline, read once at
the end with a single synchronisation), elsewhere readings of a host clock. Stages may nest (time inside the inner
stage is not booked to the outer one), and time outside every stage is booked to ``other``. The stage figures
therefore add up to ``total`` exactly (up to float rounding), which is what makes them comparable.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterator, Union

import torch

__all__ = ["StageTimer"]

OTHER = "other"


class StageTimer:
    """Books the time between consecutive marks to the stage active in between.

    Args:
        device: the engine's device; CUDA events are used when it is a CUDA device.
        clock: host clock for other devices (seconds). A benchmark may pass ``time.process_time``.
    """

    def __init__(self, device: Union[torch.device, str] = "cpu", clock: Callable[[], float] = time.perf_counter):
        self.cuda = torch.device(device).type == "cuda"
        self.clock = clock
        self._stack = [OTHER]
        self._marks: list[tuple[str, object]] = []  # (stage of the interval that starts here, mark)
        self._mark()

    def _mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append((self._stack[-1], event))
        else:
            self._marks.append((self._stack[-1], self.clock()))

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Book the time inside the ``with`` block to ``name`` (nested stages take their own share)."""
        self._stack.append(name)
        self._mark()
        try:
            yield
        finally:
            self._stack.pop()
            self._mark()

    def totals(self) -> dict[str, float]:
        """Seconds per stage and ``total`` (first mark to now). Synchronises the device once."""
        self._mark()
        if self.cuda:
            self._marks[-1][1].synchronize()
            durations = [a.elapsed_time(b) / 1000.0 for (_, a), (_, b) in zip(self._marks, self._marks[1:])]
        else:
            durations = [b - a for (_, a), (_, b) in zip(self._marks, self._marks[1:])]
        out: dict[str, float] = {}
        for (stage, _), seconds in zip(self._marks, durations):
            out[stage] = out.get(stage, 0.0) + seconds
        out["total"] = sum(durations)
        return out
