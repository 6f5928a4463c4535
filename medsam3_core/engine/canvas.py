"""The output being painted: pixel-wise maximum of ``probability × confidence`` over all objects, on the device.

Every object that is on a slice paints ``probability × confidence`` where its probability exceeds 0.5, and each
voxel goes to the highest value (the paper's pixel-wise maximum confidence; it also resolves overlaps between
prompts). The canvas lives on the engine's device in slice-stack layout ``(N, H, W)`` and paints all objects of a
slice in one call, so the host sees the result once, as one copy of the finished maps (:meth:`Canvas.to_host`).

Painting several objects at once gives exactly what painting them one after the other gives: an object wins a voxel
only when it is *strictly* higher than what is there, so the voxel ends with the first object reaching the maximum —
which is what ``max`` over the object axis returns (it reports the first maximal index).
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

from medsam3_core.engine.postprocess import MASK_THRESHOLD

__all__ = ["Canvas"]


class Canvas:
    """Confidence (float32) and owning object id (0 = background) per voxel of the slice stack.

    Ids are 16-bit (6 bytes per voxel in all) until an id beyond 32 767 appears; the ids then widen to 32 bits.
    """

    def __init__(self, shape: tuple[int, int, int], device: Union[torch.device, str] = "cpu") -> None:
        self.confidence = torch.zeros(shape, dtype=torch.float32, device=device)
        self.owner = torch.zeros(shape, dtype=torch.int16, device=device)

    def paint(self, index: int, probs: torch.Tensor, scores: Sequence[float], object_ids: Sequence[int]) -> None:
        """Paint objects ``(K, H, W)`` with their confidences and ids on slice ``index`` (in this order)."""
        if len(object_ids) == 0:
            return
        probs = torch.as_tensor(probs).to(self.confidence.device, torch.float32)
        score = torch.as_tensor(np.asarray(scores, np.float32), device=probs.device)
        if max(object_ids) > torch.iinfo(self.owner.dtype).max:
            self.owner = self.owner.to(torch.int32)
        ids = torch.as_tensor(np.asarray(object_ids, np.int32), device=probs.device).to(self.owner.dtype)
        conf = probs * score[:, None, None]
        conf = torch.where(probs > MASK_THRESHOLD, conf, torch.full_like(conf, float("-inf")))
        best, which = conf.max(dim=0)
        win = best > self.confidence[index]
        self.confidence[index] = torch.where(win, best, self.confidence[index])
        self.owner[index] = torch.where(win, ids[which], self.owner[index])

    def covered_by(self, index: int, mask: torch.Tensor, owners: Sequence[int]) -> float:
        """Fraction of ``mask`` ``(H, W)`` already owned by any of ``owners`` on slice ``index``."""
        mask = mask.to(self.owner.device)
        area = int(mask.sum())
        if area == 0 or not owners:
            return 0.0
        limit = torch.iinfo(self.owner.dtype).max  # a larger id was never painted, so it owns nothing yet
        ids = torch.as_tensor([o for o in owners if o <= limit], dtype=self.owner.dtype, device=self.owner.device)
        return float(torch.isin(self.owner[index][mask], ids).sum()) / area

    def to_host(self) -> tuple[np.ndarray, np.ndarray]:
        """``(owner, confidence)`` as numpy arrays: the one copy of the output to the host."""
        return self.owner.cpu().numpy(), self.confidence.cpu().numpy()
