"""Batched memory attention: equal to transformers' module per object, with and without cached frame keys."""

import pytest
import torch

from medsam3_core.engine.memory_attention import CACHE_MAX_TOKENS, BankLayout, BatchedMemoryAttention
from medsam3_core.model.bundle import build_random_bundle, tiny_video_config
from medsam3_core.engine.tracker import MemoryEntry

SPAN = 8


@pytest.fixture(scope="module")
def model():
    """A random tiny tracker with two memory-attention layers (the second one is per object throughout)."""
    config = tiny_video_config()
    config.tracker_config.memory_attention_num_layers = 2
    return build_random_bundle(seed=3, config=config).tracker


def _entry(model, generator, slice_index: int) -> MemoryEntry:
    height, width = model.backbone_feature_sizes[-1]
    tokens = height * width
    features = torch.randn(tokens, 1, model.mem_dim, generator=generator).to(torch.bfloat16)  # as transformers
    pos = torch.randn(tokens, 1, model.mem_dim, generator=generator)
    return MemoryEntry(slice_index, features, pos, torch.randn(1, model.hidden_dim, generator=generator))


def _banks(model):
    """Three objects with different numbers of memory frames and pointers (so the batch is padded)."""
    g = torch.Generator().manual_seed(0)
    last = int(model.num_maskmem) - 1
    banks = []
    for frames, pointers in ((1, 1), (4, 3), (2, 5)):
        entries = [_entry(model, g, s) for s in range(max(frames, pointers))]
        banks.append(
            BankLayout(
                [(e, last if i == 0 else i - 1) for i, e in enumerate(entries[:frames])],
                torch.cat([e.pointer for e in entries[:pointers]]),
                list(range(1, pointers + 1)),
            )
        )
    return banks


def _reference(model, top, top_pos, bank: BankLayout) -> torch.Tensor:
    """transformers' ``memory_attention`` on one object's unpadded memory, built as ``Sam3TrackerVideoModel`` does."""
    temporal = model.memory_temporal_positional_encoding
    tokens = torch.cat([e.features.float() for e, _ in bank.frames])
    pos = torch.cat([e.pos + temporal[t, 0] for e, t in bank.frames])
    pointers, pointer_pos = model._process_object_pointers(
        bank.distances, list(bank.pointers[:, None]), SPAN, 1, model.hidden_dim, top.device
    )
    out = model.memory_attention(
        current_vision_features=top,
        current_vision_position_embeddings=top_pos,
        memory=torch.cat([tokens, pointers]),
        memory_posision_embeddings=torch.cat([pos, pointer_pos]),
        num_object_pointer_tokens=pointers.shape[0],
    )
    return out.reshape(top.shape[0], -1)


def _slice(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    height, width = model.backbone_feature_sizes[-1]
    shape = (height * width, 1, model.hidden_dim)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


@pytest.mark.parametrize("cache", [True, False], ids=["cached-keys", "recomputed-keys"])
def test_each_object_of_a_padded_batch_equals_transformers_alone(model, cache):
    top, top_pos = _slice(model)
    banks = _banks(model)
    attention = BatchedMemoryAttention(model, SPAN)
    attention.cache = cache
    with torch.inference_mode():
        batched = attention(top, top_pos, banks)
        for i, bank in enumerate(banks):
            torch.testing.assert_close(batched[i], _reference(model, top, top_pos, bank), atol=1e-4, rtol=1e-4)
    assert all((e.keys is not None) == cache for bank in banks for e, _ in bank.frames)


def test_cached_keys_are_reused_on_the_next_slice_with_new_distances(model):
    """A frame's keys are cached once; the next slice moves every frame one step further away (new temporal
    encodings), and the cached keys still give transformers' answer."""
    banks = _banks(model)
    attention = BatchedMemoryAttention(model, SPAN)
    with torch.inference_mode():
        attention(*_slice(model, 1), banks)
        cached = [[e.keys for e, _ in bank.frames] for bank in banks]
        last = int(model.num_maskmem) - 1
        moved = [
            BankLayout([(e, t if t == last else min(t + 1, last - 1)) for e, t in b.frames], b.pointers,
                       [d + 1 for d in b.distances])
            for b in banks
        ]
        top, top_pos = _slice(model, 2)
        batched = attention(top, top_pos, moved)
        for i, bank in enumerate(moved):
            torch.testing.assert_close(batched[i], _reference(model, top, top_pos, bank), atol=1e-4, rtol=1e-4)
    assert [[e.keys for e, _ in bank.frames] for bank in moved] == cached  # the very same objects: not recomputed


def test_keys_are_cached_only_on_small_grids(model):
    height, width = model.backbone_feature_sizes[-1]
    assert BatchedMemoryAttention(model, SPAN).cache == (height * width <= CACHE_MAX_TOKENS)
    assert 72 * 72 > CACHE_MAX_TOKENS  # full-size SAM3 recomputes (the module docstring's trade-off)


def test_gradients_reach_the_memory_attention_weights(model):
    """Tracker training backpropagates through this path (outside inference mode)."""
    top, top_pos = _slice(model)
    out = BatchedMemoryAttention(model, SPAN)(top, top_pos, _banks(model))
    out.square().mean().backward()
    for layer in model.memory_attention.layers:
        for proj in (layer.self_attn.q_proj, layer.cross_attn_image.k_proj, layer.cross_attn_image.v_proj):
            assert proj.weight.grad is not None and proj.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
