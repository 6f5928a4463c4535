"""Sharding a batch over the processes ``torchrun`` starts: which rank am I, which device is mine, and the few
collectives the batch needs (share the case list, gather the summary rows).

Scaling out rests on torchrun rather than a scheduler of our own: torchrun starts one process per GPU (and across
nodes through its rendezvous), restarts or stops them together, and sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``.
Each rank runs its own share of the cases with its own model copy; no tensors are exchanged during inference, so
the collectives here only carry small Python objects. NCCL is the backend when the rank runs on a GPU and gloo on
CPU. Without torchrun (``WORLD_SIZE`` unset or 1) everything here is a no-op and the batch runs in one process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

__all__ = ["Ranks", "join", "shard"]

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place in the job: ``rank`` of ``world`` (``local_rank`` on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a small picklable object)."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def leave(self) -> None:
        """Leave the process group (a no-op outside torchrun)."""
        if self.distributed:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def rank_device(device: str, local_rank: int, world: int) -> str:
    """The device of this rank: under torchrun, ``auto`` and ``cuda`` mean this node's GPU number ``LOCAL_RANK``
    (one GPU per rank); an explicit ``cuda:N`` or ``cpu`` is kept as given."""
    name = (device or "auto").lower()
    if world <= 1 or name not in ("auto", "cuda"):
        return name
    import torch

    if name == "auto" and not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{local_rank}"


def join(device: str, timeout_minutes: int = 60) -> tuple[Ranks, str]:
    """Join the process group torchrun describes and return this rank's place and device.

    The timeout bounds how long a rank waits at a collective for the others; the summary is gathered once every
    rank has finished its cases, so it must exceed the longest imbalance between ranks' shares (an hour by
    default).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = rank_device(device, local_rank, world)
    if world <= 1:
        return Ranks(), device
    import torch
    import torch.distributed as dist

    backend = "gloo"
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_device(torch.device(device))  # NCCL's object collectives use the current device
        backend = "nccl"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return Ranks(dist.get_rank(), dist.get_world_size(), local_rank), device


def shard(items: Sequence[T], ranks: Ranks) -> list[T]:
    """This rank's share: every ``world``-th item from its own rank on, so shares differ by at most one item."""
    return list(items[ranks.rank :: ranks.world])
