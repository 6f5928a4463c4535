"""Text-prompted SAM3 detection on batches of slices: one ViT pass per slice, one head call for all prompts.

The ViT is ~95 % of SAM3's compute (measured on CPU: 41.5 s of 45 s per 1008² slice), so a slice must be
encoded once however many prompts are asked. :class:`Detector` therefore splits SAM3's forward into
:meth:`~Detector.encode_text` (cached per prompt string for the whole run), :meth:`~Detector.encode_images` (the
ViT + FPN; the engine also hands its ``last_hidden_state`` to the tracker neck) and :meth:`~Detector.detect`, which
runs the DETR encoder/decoder, scoring and mask head for every (slice, prompt) pair in one batched call, with the
prompt-independent part of those heads done once per slice (:mod:`~medsam3_core.engine.heads`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from medsam3_core.engine.heads import SharedHeads, SliceContext
from medsam3_core.engine.preprocess import Letterbox
from medsam3_core.errors import InputError, PromptError
from medsam3_core.model.bundle import Sam3Bundle, append_prompt_token, geometry_cls_token
from medsam3_core.model.tokenizer import tokenize

__all__ = ["Detections", "Detector", "TextFeatures"]


@dataclass
class TextFeatures:
    """Encoded prompts, in the order asked.

    Attributes:
        prompts: the prompts (whitespace-stripped).
        input_ids, attention_mask: ``(P, 32)`` CLIP tokens and their validity mask.
        embeds: ``(P, 32, H)`` projected per-token text features (``get_text_features(...).pooler_output``).
    """

    prompts: tuple[str, ...]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    embeds: torch.Tensor

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass
class Detections:
    """SAM3's raw per-query predictions for ``B`` slices × ``P`` prompts (CPU, float32, unless asked to stay on the
    device).

    ``Q`` is the model's number of object queries (200 for SAM3), or the detector's ``top_k`` best-scoring ones;
    queries are always ordered best first.

    Attributes:
        mask_logits: ``(B, P, Q, h, w)`` mask logits on the low-res grid covering the model's padded square
            (``h = w = S / 3.5``; 288 for S = 1008).
        scores: ``(B, P, Q)`` detection confidence ``sigmoid(logit) · sigmoid(presence)``.
        presence: ``(B, P)`` probability that the concept is present in the slice at all.
        boxes: ``(B, P, Q, 4)`` normalised ``x1, y1, x2, y2`` in the padded square.
    """

    mask_logits: torch.Tensor
    scores: torch.Tensor
    presence: torch.Tensor
    boxes: torch.Tensor

    @property
    def num_slices(self) -> int:
        return int(self.scores.shape[0])

    @property
    def num_prompts(self) -> int:
        return int(self.scores.shape[1])


class Detector:
    """Runs a bundle's ``Sam3Model`` with the image encoding shared by all prompts.

    Text features are cached for the detector's lifetime, which assumes fixed weights: during training create a
    new :class:`Detector` for each evaluation.

    Args:
        bundle: the loaded model.
        max_batch: at most this many (slice, prompt) pairs per head call (bounds peak memory: each pair holds its
            own copy of the FPN features and ``Q`` full mask maps). ``None`` runs all pairs at once.
        top_k: keep only the ``top_k`` best-scoring queries of each pair (on the device, before the copy to the
            host). Real SAM3 has 200 queries of 288² mask logits, 66 MB per pair in float32, of which the paper's
            protocol uses one; ``None`` keeps all.
    """

    def __init__(self, bundle: Sam3Bundle, max_batch: Optional[int] = None, top_k: Optional[int] = None) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if top_k is not None and top_k < 1:
            raise ValueError("top_k must be at least 1")
        self.bundle = bundle
        self.model = bundle.detector
        self.geometry_cls = bundle.geometry_cls  # Meta-trained weights expect the geometry CLS token (model.py)
        self.max_batch = max_batch
        self.top_k = top_k
        self.heads = SharedHeads(self.model)
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def letterbox(self, height: int, width: int) -> Letterbox:
        """The resize of a ``height`` × ``width`` slice to the model's input, in the convention the weights were
        trained with (letterbox for our exports, stretch for Meta-trained weights; see ``Sam3Bundle``)."""
        return Letterbox(int(height), int(width), self.bundle.image_size, keep_aspect=self.bundle.keep_aspect)

    # -- text -------------------------------------------------------------------------------------------------
    def encode_text(self, prompts: Sequence[str]) -> TextFeatures:
        """Encode ``prompts``; each distinct prompt goes through the text encoder once per :class:`Detector`.

        Raises:
            PromptError: no prompts, or an empty one.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts:
            raise PromptError("Give at least one text prompt, e.g. 'liver'.")
        cleaned = tuple(str(p).strip() for p in prompts)
        if any(not p for p in cleaned):
            raise PromptError("Every prompt must be a non-empty text such as 'kidney'.")
        missing = list(dict.fromkeys(p for p in cleaned if p not in self._text_cache))
        if missing:
            ids, mask = tokenize(self.bundle.tokenizer, missing)
            ids, mask = ids.to(self.bundle.device), mask.to(self.bundle.device)
            with torch.inference_mode():
                embeds = self.model.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
            for i, prompt in enumerate(missing):
                self._text_cache[prompt] = (ids[i], mask[i], embeds[i])
        ids, mask, embeds = (torch.stack(parts) for parts in zip(*(self._text_cache[p] for p in cleaned)))
        return TextFeatures(cleaned, ids, mask, embeds)

    # -- images -----------------------------------------------------------------------------------------------
    def encode_images(self, pixel_values: torch.Tensor) -> Sam3VisionEncoderOutput:
        """One ViT + FPN pass over ``pixel_values`` ``(B, 3, S, S)`` in ``[-1, 1]`` (see ``to_model_input``)."""
        size = self.bundle.image_size
        if pixel_values.ndim != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise InputError(
                f"The model expects images of shape (B, 3, {size}, {size}), got {tuple(pixel_values.shape)}."
            )
        pixels = pixel_values.to(device=self.bundle.device, dtype=self.bundle.dtype)
        with torch.inference_mode():
            return self.model.get_vision_features(pixel_values=pixels)

    def vision_from_hidden(self, hidden: torch.Tensor) -> Sam3VisionEncoderOutput:
        """The FPN neck on a stored ViT output ``(B, h*w, C)`` (``last_hidden_state`` of :meth:`encode_images`):
        the same maths as the second half of :meth:`encode_images`, so a volume session that keeps only the ViT's
        output gets the very same features without running the ViT again."""
        encoder = self.model.vision_encoder
        side = self.bundle.image_size // encoder.config.backbone_config.patch_size
        hidden = hidden.to(self.bundle.device)
        spatial = hidden.view(hidden.shape[0], side, side, -1).permute(0, 3, 1, 2)
        with torch.inference_mode():
            fpn, positions = encoder.neck(spatial)
        return Sam3VisionEncoderOutput(last_hidden_state=hidden, fpn_hidden_states=fpn, fpn_position_encoding=positions)

    # -- heads ------------------------------------------------------------------------------------------------
    def detect(
        self,
        vision: Sam3VisionEncoderOutput,
        text: TextFeatures,
        top_k: Optional[int] = None,
        min_score: float = 0.0,
        on_host: bool = True,
    ) -> Detections:
        """Every prompt on every encoded slice: ``B × P`` pairs in ``ceil(B·P / max_batch)`` head calls.

        ``top_k`` overrides the detector's own for this call (a caller that keeps only its best few detections
        saves computing the other queries' masks). ``on_host=False`` leaves the outputs on the device in the model's
        dtype (the engine keeps working there). Pairs with no query scoring ``min_score`` or more get empty masks
        (``heads.EMPTY_MASK_LOGIT``) without running the mask head: pass the threshold you will apply.

        Pair ``n`` is slice ``n // P`` with prompt ``n % P``. The prompt-independent part of the heads runs once per
        slice (:mod:`~medsam3_core.engine.heads`); ``last_hidden_state`` is never read (only the FPN levels), and at
        1008² it is the largest tensor of the encoding.
        """
        num_slices = int(vision.fpn_hidden_states[0].shape[0])
        num_prompts = len(text)
        total = num_slices * num_prompts
        step = self.max_batch or total
        top_k = top_k if top_k is not None else self.top_k
        parts: list[tuple[torch.Tensor, ...]] = []
        with torch.inference_mode():
            ctx = self.heads.prepare(vision)
            cls = geometry_cls_token(self.model, vision) if self.geometry_cls else None  # per slice, not per pair
            for start in range(0, total, step):
                pairs = torch.arange(start, min(start + step, total), device=vision.fpn_hidden_states[0].device)
                out = self._run_heads(ctx, text, pairs // num_prompts, pairs % num_prompts, cls, top_k, min_score)
                parts.append(tuple(_host(t) for t in out) if on_host else out)
        masks, scores, presence, boxes = (torch.cat(group) for group in zip(*parts))
        shape = (num_slices, num_prompts)
        return Detections(
            mask_logits=masks.reshape(*shape, *masks.shape[1:]),
            scores=scores.reshape(*shape, -1),
            presence=presence.reshape(shape),
            boxes=boxes.reshape(*shape, *boxes.shape[1:]),
        )

    def _run_heads(
        self,
        ctx: SliceContext,
        text: TextFeatures,
        slice_idx: torch.Tensor,
        prompt_idx: torch.Tensor,
        cls: Optional[torch.Tensor],
        top_k: Optional[int],
        min_score: float,
    ) -> tuple[torch.Tensor, ...]:
        """One head call for the given pairs: masks, scores, presence, boxes (on the device)."""
        prompt = text.embeds.index_select(0, prompt_idx)
        mask = text.attention_mask.index_select(0, prompt_idx)
        if cls is not None:  # Meta's prompt = text tokens + the slice's geometry CLS token (model.append_geometry_cls)
            prompt, mask = append_prompt_token(prompt, mask, cls.index_select(0, slice_idx))
        out = self.heads.run(ctx, slice_idx, prompt, mask, top_k=top_k, min_score=min_score)
        return out.mask_logits, out.scores, out.presence, out.boxes


def _host(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(device="cpu", dtype=torch.float32)
