"""Native SAM3 ⇄ transformers conversion: full-size key coverage (from the recorded manifest) and tiny round trips.

The manifest ``Testing/data/sam3_native_keys.json.gz`` lists every tensor of Meta's ``sam3.pt`` layout with its shape
(recorded by ``bench/fidelity/fidelity.py`` from Meta's own builder). Converting meta tensors of those shapes must
fill every parameter of transformers' full-size ``Sam3VideoModel`` with the right shape, so a transformers upgrade
or a mapping bug turns this file red without any weights being downloaded.
"""

import gzip
import json
from pathlib import Path

import pytest
import torch
from transformers import Sam3Config, Sam3VideoConfig, Sam3VideoModel

from medsam3_core.model import convert
from medsam3_core.model.checkpoints import target_shapes
from medsam3_core.model.convert import (
    DROPPED_NATIVE,
    convert_checkpoint,
    native_to_transformers,
    transformers_to_native,
)
from medsam3_core.errors import CheckpointError
from medsam3_core.model.bundle import load_model, random_video_model
from medsam3_core.model.tokenizer import bundled_tokenizer, tokenize

MANIFEST = Path(__file__).parent / "data" / "sam3_native_keys.json.gz"


@pytest.fixture(scope="module")
def native_meta() -> dict:
    """Meta's ``sam3.pt`` tensors as shape-only meta tensors."""
    with gzip.open(MANIFEST, "rt", encoding="utf-8") as handle:
        keys = json.load(handle)["keys"]
    return {name: torch.empty(shape, device="meta") for name, shape in keys.items()}


@pytest.fixture(scope="module")
def tiny_video() -> Sam3VideoModel:
    return random_video_model(seed=0)


def _shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.mark.parametrize("config_cls", [Sam3VideoConfig, Sam3Config])
def test_manifest_fills_every_full_size_parameter(native_meta, config_cls):
    config = config_cls()
    conversion = native_to_transformers(native_meta, config)
    expected, got = target_shapes(config), _shapes(conversion.state_dict)
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = {k: (got[k], expected[k]) for k in expected.keys() & got.keys() if got[k] != expected[k]}
    assert not missing, f"{len(missing)} transformers parameters would stay random, e.g. {missing[:5]}"
    assert not extra, f"{len(extra)} converted names unknown to transformers, e.g. {extra[:5]}"
    assert not wrong, f"shape mismatches, e.g. {list(wrong.items())[:3]}"
    assert conversion.unmapped == []


def test_only_documented_native_tensors_are_dropped(native_meta):
    conversion = native_to_transformers(native_meta, Sam3VideoConfig())
    import re

    patterns = [re.compile(p) for p in DROPPED_NATIVE]
    assert conversion.dropped and all(any(p.fullmatch(k) for p in patterns) for k in conversion.dropped)
    # 32 ViT blocks each drop one RoPE table; the geometry encoder drops 3 point projections (weight + bias)
    assert len(conversion.dropped) == 32 + 6


def test_inverse_mapping_restores_native_names_and_shapes(native_meta):
    conversion = native_to_transformers(native_meta, Sam3VideoConfig())
    back = transformers_to_native(conversion.state_dict)
    kept = {k: tuple(v.shape) for k, v in native_meta.items() if k not in set(conversion.dropped)}
    assert _shapes(back) == kept


def test_reshapes_are_applied():
    qkv = torch.arange(4 * 6 * 2, dtype=torch.float32).reshape(12, 4)
    pos = torch.randn(1, 65, 8)  # class token + 8x8 grid
    proj = torch.randn(8, 5)
    state = {
        "detector.backbone.vision_backbone.trunk.blocks.3.attn.qkv.weight": qkv,
        "detector.backbone.vision_backbone.trunk.pos_embed": pos,
        "detector.backbone.language_backbone.encoder.text_projection": proj,
        "tracker.sam_prompt_encoder.point_embeddings.0.weight": torch.zeros(1, 4),
        "tracker.sam_prompt_encoder.point_embeddings.1.weight": torch.ones(1, 4),
    }
    out = native_to_transformers(state, Sam3VideoConfig()).state_dict
    vit = "detector_model.vision_encoder.backbone."
    assert torch.equal(out[vit + "layers.3.attention.q_proj.weight"], qkv[:4])
    assert torch.equal(out[vit + "layers.3.attention.v_proj.weight"], qkv[8:])
    assert torch.equal(out[vit + "embeddings.position_embeddings"], pos[:, 1:])
    assert torch.equal(out["detector_model.text_encoder.text_projection.weight"], proj.t())
    assert torch.equal(out["tracker_model.prompt_encoder.point_embed.weight"], torch.tensor([[0.0] * 4, [1.0] * 4]))


def test_unknown_native_names_are_reported_not_silently_kept():
    state = {"detector.some_new_head.weight": torch.zeros(2), "detector.transformer.decoder.norm.weight": torch.ones(2)}
    conversion = native_to_transformers(state, Sam3VideoConfig())
    assert conversion.unmapped == ["detector.some_new_head.weight"]
    assert list(conversion.state_dict) == ["detector_model.detr_decoder.output_layer_norm.weight"]


def _save_trainer_checkpoint(model: Sam3VideoModel, folder: Path) -> Path:
    """A Medical SAM3-style trainer checkpoint (native names + optimizer state) and the config beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    native = transformers_to_native(model.state_dict())
    optimizer = {"state": {0: {"exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1e-4, "params": [0]}]}
    path = folder / "checkpoint.pt"
    torch.save({"model": native, "optimizer": optimizer, "epoch": 4, "loss": 0.25, "steps": {"train": 7}}, path)
    model.config.to_json_file(str(folder / "config.json"))
    return path


def test_tiny_native_checkpoint_converts_to_an_identical_model(tiny_video, tmp_path):
    source = _save_trainer_checkpoint(tiny_video, tmp_path / "release")
    report = convert_checkpoint(source, tmp_path / "converted")
    assert set(report["dropped_entries"]) == {"optimizer", "epoch", "loss", "steps"}
    assert report["unmapped"] == []
    assert json.loads((tmp_path / "converted" / "medsam3.json").read_text())["layout"] == "native SAM3"

    bundle = load_model(tmp_path / "converted", device="cpu")
    reference = tiny_video.state_dict()
    parts = {"detector_model.": bundle.detector, "tracker_model.": bundle.tracker, "tracker_neck.": bundle.tracker_neck}
    for prefix, module in parts.items():
        for name, tensor in module.state_dict().items():
            assert torch.equal(tensor, reference[prefix + name]), prefix + name
    ids, mask = tokenize(bundled_tokenizer(), ["liver"])
    pixels = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.inference_mode():
        expected = tiny_video.detector_model(pixel_values=pixels, input_ids=ids, attention_mask=mask)
        got = bundle.detector(pixel_values=pixels, input_ids=ids, attention_mask=mask)
    # identical weights; the loaded model may pick another attention kernel (sdpa), hence float-level tolerance
    for field in ("pred_logits", "presence_logits", "pred_boxes", "pred_masks", "semantic_seg"):
        torch.testing.assert_close(getattr(got, field), getattr(expected, field), atol=1e-5, rtol=1e-4)


def test_conversion_refuses_to_leave_layers_random(tiny_video, tmp_path):
    source = _save_trainer_checkpoint(tiny_video, tmp_path / "release")
    blob = torch.load(source, weights_only=True)
    for name in [k for k in blob["model"] if k.startswith("tracker.sam_mask_decoder.")]:
        del blob["model"][name]
    torch.save(blob, source)
    with pytest.raises(CheckpointError, match=r"lacks \d+ parameter.*tracker_model\.mask_decoder"):
        convert_checkpoint(source, tmp_path / "converted")
    assert not (tmp_path / "converted").exists()


def test_lora_adapter_is_merged(tiny_video, tmp_path):
    peft = pytest.importorskip("peft")
    source = _save_trainer_checkpoint(tiny_video, tmp_path / "release")
    lora = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["fc1"], init_lora_weights=False)
    adapted = peft.get_peft_model(Sam3VideoModel(tiny_video.config), lora)
    adapted.save_pretrained(str(tmp_path / "adapter"))
    lora_b = {n: p for n, p in adapted.named_parameters() if "lora_B" in n}
    assert lora_b, "the adapter must touch some layers for this test to mean anything"

    convert_checkpoint(source, tmp_path / "merged", lora=tmp_path / "adapter")
    merged = load_model(tmp_path / "merged", device="cpu").detector.state_dict()
    name = "vision_encoder.backbone.layers.0.mlp.fc1.weight"
    base = tiny_video.state_dict()["detector_model." + name]
    layer = adapted.base_model.model.detector_model.vision_encoder.backbone.layers[0].mlp.fc1
    delta = (layer.lora_B["default"].weight @ layer.lora_A["default"].weight) * layer.scaling["default"]
    assert torch.allclose(merged[name], base + delta, atol=1e-6)


def test_convert_cli_exit_codes(tiny_video, tmp_path, capsys):
    import argparse

    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    source = _save_trainer_checkpoint(tiny_video, tmp_path / "release")
    assert convert.run(parser.parse_args([str(source), str(tmp_path / "out")])) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert "converted" in capsys.readouterr().out

    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    assert convert.run(parser.parse_args([str(broken), str(tmp_path / "out2")])) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("error: broken.pt is not a checkpoint") and "Traceback" not in err
    assert not (tmp_path / "out2").exists()
