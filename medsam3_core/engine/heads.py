"""SAM3's detector heads for many prompts on the same slices, with the prompt-independent work done once per slice.

``Sam3Model.forward`` runs everything after the ViT once per (image, prompt) pair. With ``P`` prompts on a slice most
of that work is repeated ``P`` times although part of it never reads the prompt. :class:`SharedHeads` drives the same
submodules with the same maths (the tests compare it with ``Sam3Model.forward``) and moves that part to once per
slice:

1. **First DETR-encoder layer, self-attention.** The layer is self-attention → cross-attention to the prompt → MLP;
   the self-attention reads only the image tokens, so it runs per slice and the pairs start at the cross-attention.
2. **Pixel decoder (mask head FPN).** Each stage computes ``conv3x3(upsample2x(previous) + skip)`` where ``skip`` is a
   backbone FPN level. Convolution is linear, so ``conv3x3(skip)`` (with the bias) runs per slice and only the part
   that reads the prompt-dependent ``previous`` runs per pair. That part is a 3×3 convolution of a 2× *nearest*
   upsampled map, which equals four 2×2 convolutions at the low resolution, one per output phase: 16 instead of 36
   multiply-adds per input pixel and channel pair. When a slice has fewer than ``shared_from`` prompts the split
   costs more than it saves, so the stage runs exactly as transformers does.
3. **Instance projection.** Masks are ``e · (W·pixels + b)`` for query embeddings ``e``; computing ``(e·W) · pixels
   + e·b`` replaces a C×C convolution over every pixel with a ``(k×C)·(C×C)`` product.

Three more savings need no sharing: boxes and scores are computed for the last decoder layer only (the others are
auxiliary outputs for training); masks only for the ``top_k`` best-scoring queries (a caller that keeps the best
few does not need SAM3's 200 maps of 288² per pair); and with ``min_score`` the mask head skips every pair none of
whose queries reaches it — most (slice, prompt) pairs of a volume, since an organ is absent from most slices. Those
pairs get :data:`EMPTY_MASK_LOGIT` everywhere, which every caller that applies the same threshold discards anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.sam3.modeling_sam3 import (
    Sam3Model,
    Sam3VisionEncoderOutput,
    box_cxcywh_to_xyxy,
    inverse_sigmoid,
)

__all__ = ["EMPTY_MASK_LOGIT", "HeadOutput", "SharedHeads", "SliceContext"]

#: Mask logit of pairs whose masks were not computed (below ``min_score``); the tracker uses the same for "absent".
EMPTY_MASK_LOGIT = -1024.0

# Rows (or columns) of a 3×3 kernel that each tap of the 2×2 phase kernel collects, for output phase 0 and 1 of a
# 2× nearest upsampling: phase 0 reads input rows (i-1, i) with kernel rows (0, 1+2); phase 1 rows (i, i+1) with
# kernel rows (0+1, 2).
_PHASE_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


@dataclass
class HeadOutput:
    """Per pair: ``mask_logits (N, k, h, w)``, ``scores (N, k)`` best first, ``presence (N,)`` probability,
    ``boxes (N, k, 4)`` normalised ``x1, y1, x2, y2``."""

    mask_logits: torch.Tensor
    scores: torch.Tensor
    presence: torch.Tensor
    boxes: torch.Tensor


@dataclass
class SliceContext:
    """The prompt-independent head work of a batch of encoded slices (see :meth:`SharedHeads.prepare`)."""

    fpn: tuple[torch.Tensor, ...]
    tokens_after_self_attention: torch.Tensor
    token_pos: torch.Tensor
    grid: tuple[int, int]
    skip_convs: dict[int, torch.Tensor] = field(default_factory=dict)


class SharedHeads:
    """Runs a ``Sam3Model``'s detector heads for (slice, prompt) pairs (module docstring).

    Args:
        model: the detector; its weights are assumed fixed for this object's lifetime (the 2×2 phase kernels are
            derived from them once).
        shared_from: use the shared pixel-decoder path when a slice has at least this many prompts in a call.
    """

    def __init__(self, model: Sam3Model, shared_from: int = 3) -> None:
        self.model = model
        self.shared_from = shared_from
        self._phase_kernels: dict[int, torch.Tensor] = {}

    def prepare(self, vision: Sam3VisionEncoderOutput) -> SliceContext:
        """The per-slice work: first encoder layer's self-attention on the coarsest level."""
        fpn = tuple(vision.fpn_hidden_states[:-1])  # as Sam3Model: the last (extra) level is not used
        top, top_pos = fpn[-1], vision.fpn_position_encoding[:-1][-1]
        tokens = top.flatten(2).transpose(1, 2)
        token_pos = top_pos.flatten(2).transpose(1, 2)
        layer = self.model.detr_encoder.layers[0]
        normed = layer.layer_norm1(tokens)
        attended, _ = layer.self_attn(query=normed + token_pos, key=normed + token_pos, value=normed)
        return SliceContext(fpn, tokens + layer.dropout(attended), token_pos, tuple(top.shape[-2:]))

    def run(
        self,
        ctx: SliceContext,
        slice_idx: torch.Tensor,
        prompt: torch.Tensor,
        prompt_mask: torch.Tensor,
        top_k: Optional[int] = None,
        min_score: float = 0.0,
    ) -> HeadOutput:
        """Heads for pairs ``(slice_idx[n], prompt[n])``: prompt features ``(N, L, C)`` with validity ``(N, L)``.

        Pairs whose best score is below ``min_score`` get :data:`EMPTY_MASK_LOGIT` masks without running the mask
        head (module docstring).
        """
        prompt_mask = prompt_mask.bool()
        hidden, pos = self._encode(ctx, slice_idx, prompt, prompt_mask)
        decoded = self.model.detr_decoder(
            vision_features=hidden,
            text_features=prompt,
            vision_pos_encoding=pos,
            text_mask=prompt_mask,
            spatial_shapes=torch.tensor([ctx.grid], dtype=torch.long, device=hidden.device),
        )
        queries = decoded.intermediate_hidden_states[-1]  # (N, Q, C): the last layer is the prediction
        offsets = self.model.detr_decoder.box_head(queries)
        boxes = box_cxcywh_to_xyxy((inverse_sigmoid(decoded.reference_boxes[-1]) + offsets).sigmoid())
        logits = self.model.dot_product_scoring(
            decoder_hidden_states=queries[None], text_features=prompt, text_mask=prompt_mask
        )[0, ..., 0]
        presence = decoded.presence_logits[-1].float().sigmoid()  # (N, 1)
        scores = logits.float().sigmoid() * presence
        k = scores.shape[1] if top_k is None else min(top_k, scores.shape[1])
        scores, best = scores.topk(k, dim=1)  # best first
        queries = queries.gather(1, best[..., None].expand(-1, -1, queries.shape[-1]))
        boxes = boxes.gather(1, best[..., None].expand(-1, -1, boxes.shape[-1]))
        masks = hidden.new_full((scores.shape[0], k, *ctx.fpn[0].shape[-2:]), EMPTY_MASK_LOGIT)  # the finest level
        wanted = (scores[:, 0] >= min_score).nonzero()[:, 0]
        if wanted.numel():
            rows = (slice_idx, hidden, prompt, prompt_mask, queries)
            masks[wanted] = self._masks(ctx, *(t.index_select(0, wanted) for t in rows))
        return HeadOutput(masks, scores, presence[:, 0], boxes)

    # -- DETR encoder ---------------------------------------------------------------------------------------------
    def _encode(self, ctx: SliceContext, slice_idx, prompt, prompt_mask) -> tuple[torch.Tensor, torch.Tensor]:
        encoder = self.model.detr_encoder
        hidden = ctx.tokens_after_self_attention.index_select(0, slice_idx)
        pos = ctx.token_pos.index_select(0, slice_idx)
        cross_mask = create_bidirectional_mask(
            config=encoder.config, inputs_embeds=hidden, attention_mask=prompt_mask, encoder_hidden_states=prompt
        )
        first = encoder.layers[0]  # its self-attention ran per slice in prepare()
        attended, _ = first.cross_attn(
            query=first.layer_norm2(hidden), key=prompt, value=prompt, attention_mask=cross_mask
        )
        hidden = hidden + first.dropout(attended)
        hidden = hidden + first.dropout(first.mlp(first.layer_norm3(hidden)))
        for layer in encoder.layers[1:]:
            hidden = layer(hidden, prompt_feats=prompt, vision_pos_encoding=pos, prompt_cross_attn_mask=cross_mask)
        return hidden, pos

    # -- mask head ------------------------------------------------------------------------------------------------
    def _masks(self, ctx: SliceContext, slice_idx, hidden, prompt, prompt_mask, queries) -> torch.Tensor:
        decoder = self.model.mask_decoder
        normed = decoder.prompt_cross_attn_norm(hidden)
        cross_mask = create_bidirectional_mask(
            config=decoder.config, inputs_embeds=normed, attention_mask=prompt_mask, encoder_hidden_states=prompt
        )
        attended, _ = decoder.prompt_cross_attn(query=normed, key=prompt, value=prompt, attention_mask=cross_mask)
        hidden = hidden + decoder.prompt_cross_attn_dropout(attended)
        height, width = ctx.grid
        pixels = hidden[:, : height * width].transpose(1, 2).reshape(hidden.shape[0], -1, height, width)
        pairs_per_slice = slice_idx.numel() / max(int(torch.unique(slice_idx).numel()), 1)
        pixel_decoder = decoder.pixel_decoder
        for stage, skip in enumerate(reversed(ctx.fpn[:-1])):
            conv = pixel_decoder.conv_layers[stage]
            exact_2x = tuple(skip.shape[-2:]) == (2 * pixels.shape[-2], 2 * pixels.shape[-1])
            if exact_2x and pairs_per_slice >= self.shared_from:
                skip_part = self._skip_conv(ctx, stage, skip).index_select(0, slice_idx)
                pixels = self._add_upsampled_conv(stage, pixels, skip_part)
            else:
                upsampled = F.interpolate(pixels, size=skip.shape[-2:], mode="nearest")
                pixels = conv(upsampled + skip.index_select(0, slice_idx))
            pixels = F.relu(pixel_decoder.norms[stage](pixels))
        embedded = decoder.mask_embedder(queries)  # (N, k, C)
        projection = decoder.instance_projection
        weight = projection.weight[:, :, 0, 0]  # (C_out, C_in)
        masks = torch.einsum("nkc,nchw->nkhw", embedded @ weight, pixels)
        return masks + (embedded @ projection.bias)[..., None, None]

    def _skip_conv(self, ctx: SliceContext, stage: int, skip: torch.Tensor) -> torch.Tensor:
        if stage not in ctx.skip_convs:
            ctx.skip_convs[stage] = self.model.mask_decoder.pixel_decoder.conv_layers[stage](skip)
        return ctx.skip_convs[stage]

    def _add_upsampled_conv(self, stage: int, pixels: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out += conv3x3(nearest_upsample_2x(pixels))`` (without the conv's bias), as four 2×2 convolutions at the
        low resolution, each added straight into its output phase (no upsampled map is ever materialised)."""
        kernels = self._phase_kernel(stage, pixels)
        n, _, h, w = pixels.shape
        channels = kernels.shape[0] // 4
        phases = F.conv2d(F.pad(pixels, (1, 1, 1, 1)), kernels).view(n, 2, 2, channels, h + 1, w + 1)
        interleaved = out.view(n, channels, h, 2, w, 2)  # [.., i, a, j, b] is output pixel (2i + a, 2j + b)
        for a in (0, 1):
            for b in (0, 1):
                interleaved[:, :, :, a, :, b] += phases[:, a, b, :, a : a + h, b : b + w]
        return out

    def _phase_kernel(self, stage: int, like: torch.Tensor) -> torch.Tensor:
        kernel = self._phase_kernels.get(stage)
        if kernel is None or kernel.device != like.device or kernel.dtype != like.dtype:
            weight = self.model.mask_decoder.pixel_decoder.conv_layers[stage].weight.float()
            taps = _PHASE_TAPS.to(weight.device)
            # (a, b, out, in, p, q): phase (a, b) tap (p, q) sums the 3×3 weights its upsampled pixels hit.
            kernel = torch.einsum("apy,oiyx,bqx->aboipq", taps, weight, taps)
            kernel = kernel.reshape(-1, weight.shape[1], 2, 2).to(device=like.device, dtype=like.dtype)
            self._phase_kernels[stage] = kernel
        return kernel
