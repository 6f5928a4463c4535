"""The few DDP helpers training needs, reading only what ``torchrun`` sets (RANK, LOCAL_RANK, WORLD_SIZE).

Everything degrades to single-process behaviour when no process group is initialised, so the same engine runs
under ``python -m training.run`` and ``torchrun --nproc_per_node=N -m training.run``.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Hashable

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "init_from_env",
    "is_initialized",
    "rank",
    "local_rank",
    "world_size",
    "is_main",
    "barrier",
    "all_reduce_sum",
    "broadcast_object",
    "sum_arrays",
    "shutdown",
]


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: torch.device, timeout_min: int = 30) -> bool:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); ``False`` when not under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or is_initialized():
        return is_initialized()
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_min))
    return True


def barrier() -> None:
    if is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of ``t`` over ranks (a copy; ``t`` itself is left unchanged)."""
    if not is_initialized():
        return t
    t = t.detach().clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on at least one rank, known on every rank (so all ranks stop at the same step)."""
    if not is_initialized():
        return flag
    on_cuda = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
    t = torch.tensor([float(flag)], device=torch.device("cuda", torch.cuda.current_device()) if on_cuda else "cpu")
    return bool(all_reduce_sum(t).item() > 0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled; for small things such as a decision or a path)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def sum_arrays(parts: dict[Hashable, np.ndarray], length: int) -> dict[Hashable, np.ndarray]:
    """Key-wise float64 sums of length-``length`` arrays over ranks; every rank gets the union of all ranks' keys.

    A rank may lack keys another has (its shard never met that dataset or concept), so the keys are gathered first
    and put in one order (by ``repr``: keys only need a deterministic order, not a comparable type); then one
    all-reduce adds the stacked values.
    """
    if not is_initialized():
        return {k: np.asarray(v, np.float64) for k, v in parts.items()}
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, list(parts))
    keys = sorted({k for ks in gathered for k in ks}, key=repr)
    values = torch.zeros(len(keys), length, dtype=torch.float64)
    for i, k in enumerate(keys):
        if k in parts:
            values[i] = torch.from_numpy(np.asarray(parts[k], np.float64))
    nccl = dist.get_backend() == "nccl"  # NCCL reduces CUDA tensors only
    values = values.to(torch.device("cuda", torch.cuda.current_device())) if nccl else values
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    values = values.cpu()
    return {k: values[i].numpy() for i, k in enumerate(keys)}


def shutdown() -> None:
    if is_initialized():
        dist.destroy_process_group()
