"""Per-decoder-layer outputs of ``Sam3Model`` for deep supervision.

transformers' ``Sam3Model.forward`` computes classification logits, boxes and presence for every DETR decoder layer but
returns only the last layer's. Forward hooks on ``detr_decoder`` and ``dot_product_scoring`` capture the per-layer
tensors during the normal forward (the hooked last layer is identical to the returned one; a test checks it), so the
auxiliary losses need no second pass and no change to the model. Masks exist for the last layer only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from transformers import Sam3Model
from transformers.models.sam3.modeling_sam3 import box_cxcywh_to_xyxy, inverse_sigmoid

__all__ = ["DetectorOutputs", "AuxCapture"]


@dataclass
class DetectorOutputs:
    """What the criterion needs, for ``L`` decoder layers, ``B`` prompts and ``Q`` queries.

    Attributes:
        logits: ``(L, B, Q)`` query classification logits (clamped ±12 by the model).
        boxes: ``(L, B, Q, 4)`` normalised ``xyxy`` boxes.
        presence: ``(L, B)`` presence logits (clamped ±10 by the model).
        masks: ``(B, Q, h, w)`` mask logits of the last layer (``h = 4·image_size/patch``).
        semantic: ``(B, 1, h, w)`` semantic-segmentation logits, or ``None``.
    """

    logits: torch.Tensor
    boxes: torch.Tensor
    presence: torch.Tensor
    masks: torch.Tensor
    semantic: Optional[torch.Tensor]

    @property
    def num_layers(self) -> int:
        return int(self.logits.shape[0])


class AuxCapture:
    """Hooks a ``Sam3Model`` once; call :meth:`collect` with each forward's output to get :class:`DetectorOutputs`.

    Works through ``DistributedDataParallel`` and peft wrappers because the hooks sit on the inner modules.
    """

    def __init__(self, detector: Sam3Model) -> None:
        self._detector = detector
        self._captured: dict[str, Any] = {}
        self._handles = [
            detector.detr_decoder.register_forward_hook(self._store("decoder")),
            detector.dot_product_scoring.register_forward_hook(self._store("scores")),
        ]

    def _store(self, key: str):
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            self._captured[key] = output

        return hook

    def collect(self, out: Any) -> DetectorOutputs:
        """Combine the captured per-layer tensors with the model output ``out`` of the same forward."""
        if "decoder" not in self._captured or "scores" not in self._captured:
            raise RuntimeError("AuxCapture.collect() called before a forward pass of the hooked Sam3Model")
        dec = self._captured.pop("decoder")
        scores = self._captured.pop("scores").squeeze(-1)
        offsets = self._detector.detr_decoder.box_head(dec.intermediate_hidden_states)
        boxes = box_cxcywh_to_xyxy((inverse_sigmoid(dec.reference_boxes) + offsets).sigmoid())
        return DetectorOutputs(
            logits=scores,
            boxes=boxes,
            presence=dec.presence_logits.squeeze(-1),
            masks=out.pred_masks,
            semantic=out.semantic_seg,
        )

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
