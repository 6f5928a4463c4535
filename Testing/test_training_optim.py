"""Parameter groups, layer-wise LR decay and the warm-up / inverse-square-root schedule."""

import math

import pytest
from transformers import Sam3Model

from medsam3_core.model.bundle import tiny_detector_config
from training.optim import OptimConfig, build_optimizer, build_param_groups, lr_factor, param_group_name, vit_level


def test_group_names_follow_sam3_modules():
    assert param_group_name("detr_decoder.layers.0.self_attn.q_proj.weight") == "decoder"
    assert param_group_name("module.mask_decoder.pixel_decoder.conv_layers.0.weight") == "decoder"
    assert param_group_name("dot_product_scoring.text_proj.weight") == "decoder"
    assert param_group_name("vision_encoder.neck.fpn_layers.0.proj1.weight") == "vision"
    assert param_group_name("base_model.model.text_encoder.text_model.embeddings.token_embedding.weight") == "text"
    assert param_group_name("text_projection.weight") == "text"
    assert param_group_name("geometry_encoder.layers.0.mlp.fc1.weight") == "geometry"
    with pytest.raises(ValueError, match="no optimiser group"):
        param_group_name("tracker_model.memory_encoder.weight")


def test_vit_blocks_map_evenly_onto_paper_levels():
    # SAM3's 32 blocks onto the paper's L = 12 levels; stem at 0, last block at L, neck at L
    levels = [vit_level(f"vision_encoder.backbone.layers.{i}.mlp.fc1.weight", 32, 12) for i in range(32)]
    assert levels[0] == 1 and levels[-1] == 12 and levels == sorted(levels) and set(levels) == set(range(1, 13))
    assert vit_level("vision_encoder.backbone.embeddings.position_embeddings", 32, 12) == 0
    assert vit_level("vision_encoder.neck.fpn_layers.1.proj1.weight", 32, 12) == 12


def test_group_learning_rates_over_the_schedule():
    model = Sam3Model(tiny_detector_config(vit_layers=2))
    cfg = OptimConfig(warmup_steps=10)
    opt, sched = build_optimizer(build_param_groups(model, cfg), cfg)
    peak = {g["name"]: g["initial_lr"] for g in opt.param_groups}
    assert peak["decoder"] == pytest.approx(3e-4)
    assert peak["text"] == pytest.approx(5e-5)
    assert peak["geometry"] == pytest.approx(1e-4)
    assert peak["vision.level12"] == pytest.approx(5e-5)  # block 1 of 2 and the neck
    assert peak["vision.level6"] == pytest.approx(5e-5 * 0.85**6)  # block 0 of 2 → ceil(1·12/2)
    assert peak["vision.level0.no_decay"] == pytest.approx(5e-5 * 0.85**12)  # patch/position embeddings
    assert all(g["weight_decay"] == 0 for g in opt.param_groups if g["name"].endswith("no_decay"))
    n_params = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_params == sum(p.numel() for p in model.parameters())

    def lrs():
        return {g["name"]: g["lr"] for g in opt.param_groups}

    seen = {0: lrs()}
    for step in range(1, 40):
        opt.step()
        sched.step()
        seen[step] = lrs()
    for name, lr in peak.items():
        assert seen[0][name] == pytest.approx(lr / 10)  # warm-up starts at 1/W of the peak
        assert seen[4][name] == pytest.approx(lr * 5 / 10)
        assert seen[9][name] == pytest.approx(lr)  # peak at the end of warm-up
        assert seen[39][name] == pytest.approx(lr * math.sqrt(10 / 40))  # then 1/√t: half at 4× the warm-up


def test_lr_factor_is_continuous_at_the_end_of_warmup():
    assert lr_factor(99, 100) == 1.0
    assert lr_factor(100, 100) == pytest.approx(math.sqrt(100 / 101))
    assert lr_factor(5, 0) == 1.0


def test_trainable_parameters_only():
    model = Sam3Model(tiny_detector_config())
    for p in model.text_encoder.parameters():
        p.requires_grad_(False)
    grouped = {id(p) for g in build_param_groups(model, OptimConfig()) for p in g["params"]}
    assert not any(id(p) in grouped for p in model.text_encoder.parameters())
    assert all(id(p) in grouped for p in model.text_projection.parameters())
