"""The bounded, batched memory tracker reproduces transformers' ``Sam3TrackerVideoModel`` and stays bounded."""

import pytest
import torch
import torch.nn.functional as F
from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import Sam3TrackerVideoInferenceSession

from medsam3_core.errors import ModelError
from medsam3_core.model.bundle import build_random_bundle, tiny_video_config
from medsam3_core.engine.tracker import MemoryTracker

NUM_SLICES = 6


@pytest.fixture(scope="module", params=[1, 2], ids=["1-layer", "2-layer"])
def bundle(request):
    """A random tiny bundle whose tracker believes objects are present (random init says "absent" everywhere,
    which would hide the masks behind transformers' -1024 no-object logits and make the comparison vacuous).

    With one and with two memory-attention layers: from the second layer on, each object has its own
    self-attention (the first layer's is shared by all objects, see ``memory_attention``)."""
    config = tiny_video_config()
    config.tracker_config.memory_attention_num_layers = request.param
    bundle = build_random_bundle(seed=0, config=config)
    with torch.no_grad():
        bundle.tracker.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(3.0)
    return bundle


@pytest.fixture(scope="module")
def encoded(bundle):
    """Random slices encoded once: detector ViT output and the tracker's view of it."""
    size = bundle.image_size
    pixels = torch.randn(NUM_SLICES, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        vision = bundle.detector.get_vision_features(pixel_values=pixels)
        feats = MemoryTracker(bundle, 7, NUM_SLICES).features(vision)
    return feats


def _seed_masks(bundle, n: int) -> torch.Tensor:
    side = 4 * bundle.tracker.prompt_encoder.image_embedding_size[0]
    masks = torch.zeros(n, side, side, dtype=torch.bool)
    for i in range(n):
        masks[i, 4 + 3 * i : 16 + 3 * i, 6 : 20 + i] = True
    return masks


def _reference_run(bundle, feats, masks, seed, order):
    """transformers' own per-object tracker, fed the same features slice by slice (what Sam3VideoModel does)."""
    size = bundle.image_size
    session = Sam3TrackerVideoInferenceSession(
        video=torch.zeros(NUM_SLICES, 3, size, size), inference_device="cpu", dtype=torch.float32
    )
    reverse = order[-1] < seed

    def cache(frame):
        f = feats[frame]
        flat = [lvl.flatten(2).permute(2, 0, 1) for lvl in f.high_res] + [f.top]
        pos = [torch.zeros_like(flat[0]), torch.zeros_like(flat[1]), f.top_pos]
        session.cache.cache_vision_features(frame, {"vision_feats": flat, "vision_pos_embeds": pos})

    for obj_id, mask in enumerate(masks, start=1):
        idx = session.obj_id_to_idx(obj_id)
        up = F.interpolate(mask[None, None].float(), size=(size, size), mode="bilinear") > 0.5
        session.add_mask_inputs(idx, seed, up)
    session.obj_with_new_inputs = list(range(1, len(masks) + 1))
    cache(seed)
    bundle.tracker(session, frame_idx=seed)
    outputs = {}
    for frame in order:
        cache(frame)
        out = bundle.tracker(session, frame_idx=frame, reverse=reverse)
        outputs[frame] = (out.pred_masks[:, 0].clone(), out.object_score_logits.reshape(-1).clone())
    return outputs


def assert_close_scaled(actual, expected, rel=1e-3):
    """Random weights give tiny mask logits (~1e-3): compare relative to the reference's own scale."""
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(actual, expected, atol=rel * scale, rtol=rel)


def _our_run(bundle, feats, masks, seed, order, memory_size=7):
    tracker = MemoryTracker(bundle, memory_size, NUM_SLICES)
    size = bundle.image_size
    with torch.inference_mode():
        memories = tracker.seed(feats[seed], masks, seed)
        outputs = {}
        for frame in order:
            step = tracker.propagate(feats[frame], memories, frame)
            high = F.interpolate(step.mask_logits[:, None], size=(size, size), mode="bilinear")[:, 0]
            tracker.remember(feats[frame], memories, frame, high, step.score_logits, step.pointers)
            outputs[frame] = (step.mask_logits, step.score_logits)
    return outputs, memories


@pytest.mark.parametrize("seed,order", [(1, [2, 3, 4, 5]), (4, [3, 2, 1, 0])], ids=["forward", "backward"])
def test_matches_transformers_tracker_in_both_directions(bundle, encoded, seed, order):
    masks = _seed_masks(bundle, 3)
    with torch.inference_mode():
        reference = _reference_run(bundle, encoded, masks, seed, order)
    ours, _ = _our_run(bundle, encoded, masks, seed, order)
    for frame in order:
        assert (ours[frame][0] > 0).any() and (ours[frame][1] > 0).all()  # real masks, not "absent" placeholders
        assert_close_scaled(ours[frame][0], reference[frame][0])
        assert_close_scaled(ours[frame][1], reference[frame][1])


def test_batched_objects_equal_one_at_a_time(bundle, encoded):
    masks = _seed_masks(bundle, 3)
    together, _ = _our_run(bundle, encoded, masks, 0, [1, 2])
    for i in range(3):
        alone, _ = _our_run(bundle, encoded, masks[i : i + 1], 0, [1, 2])
        assert_close_scaled(together[2][0][i : i + 1], alone[2][0])


def test_objects_started_on_different_slices_share_one_batch(bundle, encoded):
    """Banks of different lengths are padded and masked: batched results equal each object propagated alone."""
    masks = _seed_masks(bundle, 2)

    def run(which):
        tracker = MemoryTracker(bundle, 7, NUM_SLICES)
        with torch.inference_mode():
            early = tracker.seed(encoded[0], masks[:1], 0) if "early" in which else []
            for frame in (1, 2):
                if early:
                    step = tracker.propagate(encoded[frame], early, frame)
                    tracker.remember(encoded[frame], early, frame, step.mask_logits, step.score_logits, step.pointers)
            late = tracker.seed(encoded[2], masks[1:], 2) if "late" in which else []
            objects = early + late
            assert len({m.layout for m in objects}) == len(which)  # really different layouts when both run
            return tracker.propagate(encoded[3], objects, 3)

    both, early, late = run(("early", "late")), run(("early",)), run(("late",))
    assert_close_scaled(both.mask_logits[:1], early.mask_logits)
    assert_close_scaled(both.mask_logits[1:], late.mask_logits)
    assert_close_scaled(both.score_logits, torch.cat([early.score_logits, late.score_logits]))


def test_memory_bank_is_bounded_and_turning_keeps_the_seed(bundle, encoded):
    masks = _seed_masks(bundle, 2)
    _, memories = _our_run(bundle, encoded, masks, 0, [1, 2, 3, 4, 5], memory_size=3)
    for mem in memories:
        assert [e.slice_index for e in mem.recent] == [4, 5]  # memory_size 3 = seed + 2 most recent
        assert len(mem.pointers) == NUM_SLICES - 1
        mem.turn()
        assert mem.layout == (0, 0) and mem.conditioning.slice_index == 0


def test_memory_size_must_fit_the_checkpoint(bundle):
    with pytest.raises(ModelError, match="memory size must be between"):
        MemoryTracker(bundle, bundle.tracker.num_maskmem + 1, 10)
