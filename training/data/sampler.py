"""Balanced, distributed, resumable sampling over several datasets.

Datasets differ in size by orders of magnitude (the paper's span 58 px nuclei to 1 M px X-rays, tens to thousands of
images), so each epoch first draws *which dataset* every sample comes from, with probability proportional to the
configured weights, and then walks a fresh permutation of that dataset. Rank ``r`` of ``W`` takes every ``W``-th
sample of the epoch's global sequence (the DistributedSampler convention). The sequence is a pure function of
``(seed, epoch)``, so a resumed run continues from ``position`` and sees exactly the samples it would have seen.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

__all__ = ["BalancedSampler"]


class BalancedSampler(torch.utils.data.Sampler[int]):
    """Yields indices into the concatenation of datasets with ``sizes``; ``len`` is this rank's samples per epoch."""

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence[float],
        samples_per_epoch: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not sizes or min(sizes) <= 0:
            raise ValueError(f"every dataset needs at least one sample, got sizes {list(sizes)}")
        self.sizes = [int(s) for s in sizes]
        w = np.asarray(weights, dtype=float)
        self.probs = w / w.sum()
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.per_rank = max(1, samples_per_epoch // world_size)
        self.epoch = 0
        self.position = 0

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """The global index sequence of ``epoch`` (all ranks)."""
        rng = np.random.default_rng((self.seed, epoch))
        total = self.per_rank * self.world_size
        which = rng.choice(len(self.sizes), size=total, p=self.probs)
        out = np.empty(total, dtype=np.int64)
        for d, size in enumerate(self.sizes):
            slots = np.flatnonzero(which == d)
            reps = -(-len(slots) // size) if len(slots) else 0
            order = np.concatenate([rng.permutation(size) for _ in range(reps)]) if reps else np.empty(0, np.int64)
            out[slots] = self.offsets[d] + order[: len(slots)]
        return out

    def set_epoch(self, epoch: int, position: int = 0) -> None:
        """Start ``epoch`` at this rank's sample ``position`` (non-zero only when resuming mid-epoch)."""
        self.epoch, self.position = epoch, position

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def __iter__(self) -> Iterator[int]:
        mine = self.epoch_indices(self.epoch)[self.rank :: self.world_size]
        for i in range(self.position, len(mine)):
            yield int(mine[i])

    def __len__(self) -> int:
        return self.per_rank - self.position
