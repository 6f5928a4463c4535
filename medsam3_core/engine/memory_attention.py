"""The tracker's memory attention for a batch of objects, with the work that does not depend on the object done once.

``Sam3TrackerVideoMemoryAttention`` conditions the current slice's features on one object's memory: every layer runs
a RoPE self-attention over the slice's tokens, a RoPE cross-attention to the memory tokens (spatial memories of the
remembered slices, then object pointers) and an MLP. Called with ``N`` objects it repeats all of it ``N`` times.
:class:`BatchedMemoryAttention` drives the same submodules with the same maths, but

* the first layer's self-attention and cross-attention query depend only on the slice, so they run once (batch 1)
  and the objects branch off at the first cross-attention;
* a memory frame's key is ``RoPE(k_proj(memory + position + temporal))``. The temporal encoding depends on how far
  the remembered slice is from the current one, so it changes at every step, but both the projection and RoPE are
  linear: the key is ``RoPE(k_proj(memory + position)) + RoPE(W_k · temporal)``. The first term and the value
  ``v_proj(memory)`` are fixed while the frame stays in the bank, so they are computed once per frame per layer
  (:class:`FrameKeys`, kept on the memory entry) instead of at every step; the second term is one small table per
  layer and step. Caching costs ``2 · layers · attention width`` numbers per memory token and saves about
  ``64 / tokens`` of the attention's work, so it is done only on grids up to :data:`CACHE_MAX_TOKENS` tokens
  (where it pays, e.g. 16 × 16); at full size (72 × 72) the keys would take ~40 MB per remembered slice for a ~1 %
  saving, and are recomputed instead;
* objects with banks of different lengths are padded and the padding is masked out of the attention, so each object
  gets exactly what it would alone.

The tracker runs in eval mode (inference and tracker training alike), so no attention dropout is applied; the layer
dropouts are called as modules and are the identity there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol, Sequence

import torch
import torch.nn.functional as F
from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import get_1d_sine_pe, rotate_pairwise

__all__ = ["CACHE_MAX_TOKENS", "FrameKeys", "MemoryFrame", "BankLayout", "BatchedMemoryAttention"]

#: Cache per-frame keys and values on grids of at most this many tokens (module docstring).
CACHE_MAX_TOKENS = 1024


@dataclass
class FrameKeys:
    """One memory frame's per-layer keys (RoPE applied, no temporal encoding) and values, ``(heads, h*w, dim)``."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]


class MemoryFrame(Protocol):
    """A remembered slice (``tracker.MemoryEntry``): spatial memory and its position encoding ``(h*w, 1, 64)``, and
    a slot for its :class:`FrameKeys`, filled on first use when caching is on."""

    features: torch.Tensor
    pos: torch.Tensor
    keys: Optional[FrameKeys]


@dataclass
class BankLayout:
    """What one object attends to on this slice.

    Attributes:
        frames: ``(frame, temporal index)`` per remembered slice, conditioning memory first.
        pointers: ``(P, C)`` object pointers; ``distances``: their slice distances (``P`` ints).
    """

    frames: list[tuple[MemoryFrame, int]]
    pointers: torch.Tensor
    distances: list[int]


class BatchedMemoryAttention:
    """Memory attention for many objects on one slice (module docstring).

    Args:
        model: the ``Sam3TrackerVideoModel`` whose ``memory_attention`` (and temporal encodings) to drive.
        pointer_span: object-pointer distances are normalised by ``pointer_span - 1``, as transformers does with
            ``max_object_pointers_in_encoder`` clipped to the video length.
    """

    def __init__(self, model, pointer_span: int) -> None:
        self.model = model
        self.module = model.memory_attention
        self.pointer_span = pointer_span
        height, width = model.backbone_feature_sizes[-1]
        self.tokens = int(height) * int(width)
        self.cache = self.tokens <= CACHE_MAX_TOKENS

    # -- public ----------------------------------------------------------------------------------------------------
    def __call__(self, top: torch.Tensor, top_pos: torch.Tensor, banks: Sequence[BankLayout]) -> torch.Tensor:
        """Condition the slice's top-level features ``(h*w, 1, C)`` on each bank: ``(N, h*w, C)``."""
        module = self.module
        x = (top + 0.1 * top_pos).transpose(0, 1)  # (1, h*w, C), batch first
        cos, sin = module.rotary_emb(x, module.position_ids)
        keys, values, mask = self._memory(banks, cos, sin, x.dtype)
        for index, layer in enumerate(module.layers):
            h = layer.layer_norm1(x)
            x = x + layer.dropout1(self._self_attention(layer.self_attn, h, cos, sin))
            h = layer.layer_norm2(x)
            attended = self._cross_attention(layer.cross_attn_image, h, keys[index], values[index], mask, cos, sin)
            x = x + layer.dropout2(attended)  # (N, h*w, C) from here on
            h = layer.layer_norm3(x)
            x = x + layer.dropout3(layer.linear2(layer.dropout(layer.activation(layer.linear1(h)))))
        return module.layer_norm(x)

    # -- attention -------------------------------------------------------------------------------------------------
    @staticmethod
    def _split(attention, t: torch.Tensor) -> torch.Tensor:
        """``(B, L, heads·dim)`` → ``(B, heads, L, dim)``."""
        return t.unflatten(-1, (attention.num_attention_heads, attention.head_dim)).transpose(-3, -2)

    @staticmethod
    def _merge(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(-3, -2).flatten(-2)

    def _self_attention(self, attention, h, cos, sin) -> torch.Tensor:
        q = _rope(self._split(attention, attention.q_proj(h)), cos, sin)
        k = _rope(self._split(attention, attention.k_proj(h)), cos, sin)
        v = self._split(attention, attention.v_proj(h))
        out = F.scaled_dot_product_attention(q, k, v, scale=attention.scaling)
        return attention.o_proj(self._merge(out))

    def _cross_attention(self, attention, h, keys, values, mask, cos, sin) -> torch.Tensor:
        q = _rope(self._split(attention, attention.q_proj(h)), cos, sin)
        q = q.expand(keys.shape[0], -1, -1, -1)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=attention.scaling)
        return attention.o_proj(self._merge(out))

    # -- memory ----------------------------------------------------------------------------------------------------
    def _memory(self, banks: Sequence[BankLayout], cos, sin, dtype):
        """Per layer ``(N, heads, L, dim)`` keys and values of all banks (padded) and the ``(N, 1, 1, L)`` mask."""
        layers = self.module.layers
        frames = max(len(b.frames) for b in banks)
        splits = self._pointer_splits()
        pointers = max(len(b.distances) for b in banks)
        spatial = frames * self.tokens
        length = spatial + pointers * splits
        first = layers[0].cross_attn_image
        shape = (len(banks), first.num_attention_heads, length, first.head_dim)
        keys = [cos.new_empty(shape, dtype=dtype) for _ in layers]  # every token is written below
        values = [cos.new_empty(shape, dtype=dtype) for _ in layers]
        valid = torch.zeros(len(banks), length, dtype=torch.bool, device=cos.device)
        temporal = [self._temporal_keys(layer.cross_attn_image, cos, sin, dtype) for layer in layers]
        for i, bank in enumerate(banks):
            for j, (memory_frame, t_index) in enumerate(bank.frames):
                frame = self._frame_keys(memory_frame, cos, sin, dtype)
                span = slice(j * self.tokens, (j + 1) * self.tokens)
                for layer in range(len(layers)):
                    keys[layer][i, :, span] = frame.keys[layer] + temporal[layer][t_index]
                    values[layer][i, :, span] = frame.values[layer]
            padding = slice(len(bank.frames) * self.tokens, spatial)
            for tensor in keys + values:  # masked out, but must be finite: a NaN key from uninitialised memory
                tensor[i, :, padding] = 0  # would make the object's scores NaN despite the -inf mask
            valid[i, : len(bank.frames) * self.tokens] = True
            valid[i, spatial : spatial + len(bank.distances) * splits] = True
        tokens, pos = self._pointer_tokens(banks, pointers, splits, dtype)
        for layer, block in enumerate(layers):
            attention = block.cross_attn_image
            keys[layer][:, :, spatial:] = self._split(attention, attention.k_proj(tokens + pos))
            values[layer][:, :, spatial:] = self._split(attention, attention.v_proj(tokens))
        mask = None
        if not bool(valid.all()):
            mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(~valid, float("-inf"))
            mask = mask[:, None, None, :]
        return keys, values, mask

    def _frame_keys(self, memory_frame: MemoryFrame, cos, sin, dtype) -> FrameKeys:
        """Keys (without the temporal term) and values of one memory frame, cached on the frame when it pays."""
        if memory_frame.keys is not None:
            return memory_frame.keys
        tokens = memory_frame.features.to(dtype).transpose(0, 1)  # (1, h*w, 64)
        keyed = tokens + memory_frame.pos.to(dtype).transpose(0, 1)
        frame = FrameKeys([], [])
        for block in self.module.layers:
            attention = block.cross_attn_image
            frame.keys.append(_rope(self._split(attention, attention.k_proj(keyed)), cos, sin)[0])
            frame.values.append(self._split(attention, attention.v_proj(tokens))[0])
        if self.cache:
            memory_frame.keys = frame
        return frame

    def _temporal_keys(self, attention, cos, sin, dtype) -> torch.Tensor:
        """``RoPE(W_k · temporal encoding)`` for each temporal index: ``(num_maskmem, heads, h*w, dim)``."""
        temporal = self.model.memory_temporal_positional_encoding.reshape(-1, 1, attention.kv_in_dim).to(dtype)
        projected = F.linear(temporal, attention.k_proj.weight)  # no bias: it is in the frame's own key
        return _rope(self._split(attention, projected).expand(-1, -1, self.tokens, -1), cos, sin)

    def _pointer_splits(self) -> int:
        model = self.model
        return model.hidden_dim // model.mem_dim if model.mem_dim < model.hidden_dim else 1

    def _pointer_tokens(self, banks: Sequence[BankLayout], count: int, splits: int, dtype):
        """Object-pointer tokens ``(N, count·splits, 64)`` and their temporal encodings, zero-padded (as
        ``Sam3TrackerVideoModel._process_object_pointers``, for all objects at once)."""
        model = self.model
        device = banks[0].pointers.device
        pointers = torch.zeros(len(banks), count, model.hidden_dim, dtype=dtype, device=device)
        distances = torch.zeros(len(banks), count, dtype=torch.float32, device=device)
        for i, bank in enumerate(banks):
            pointers[i, : len(bank.distances)] = bank.pointers
            distances[i, : len(bank.distances)] = torch.tensor(bank.distances, dtype=torch.float32)
        if model.config.enable_temporal_pos_encoding_for_object_pointers:
            sine = get_1d_sine_pe(distances / float(self.pointer_span - 1), dim=model.hidden_dim).to(dtype)
            pos = model.temporal_positional_encoding_projection_layer(sine)
        else:
            pos = pointers.new_zeros(len(banks), count, model.mem_dim)
        tokens = pointers.reshape(len(banks), count * splits, -1)
        return tokens, pos.repeat_interleave(splits, dim=1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' 2D RoPE (``apply_rotary_pos_emb_2d``) on ``(..., h*w, dim)``, in float32 like the original."""
    up = x.float()
    return ((up * cos) + (rotate_pairwise(up) * sin)).to(x.dtype)
