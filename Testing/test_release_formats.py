"""Every layout the Medical SAM3 releases come in converts, proved on tiny synthetic checkpoints of the same layout.

- 2D: a trainer checkpoint of the image model alone, keys *without* the ``detector.`` prefix, no tracker;
- 3D: a trainer checkpoint with ``detector.*`` and ``tracker.*`` keys, converted at a non-default image size (the real
  one is 504 px, not SAM3's 1008);
- the LoRA adapter as a raw state dict ``.pt`` (native names, on Meta's fused ``qkv``; or transformers names) and as a
  PEFT folder;
- and the files that are not checkpoints at all, or that carry pickled code.
"""

import argparse
import json
import pickle
from pathlib import Path

import pytest
import torch
from transformers import Sam3Model, Sam3VideoModel

from medsam3_core.errors import CheckpointError
from medsam3_core.model import convert
from medsam3_core.model.bundle import load_model, random_video_model
from medsam3_core.model.convert import convert_checkpoint, transformers_to_native
from medsam3_core.model.image_size import with_image_size
from medsam3_core.model.tokenizer import bundled_tokenizer, tokenize

#: Not the tiny default (112): like the 3D release's 504 px, a grid (6 × 6 patches) that the ViT's window (4 here,
#: 24 in SAM3) does not divide, so the windowed layers pad.
NON_DEFAULT_SIZE = 84
QKV = "detector.backbone.vision_backbone.trunk.blocks.0.attn.qkv"


@pytest.fixture(scope="module")
def tiny_video() -> Sam3VideoModel:
    return random_video_model(seed=11)


def _trainer_checkpoint(state: dict, folder: Path, config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "checkpoint.pt"
    torch.save({"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 8}, path)
    config.to_json_file(str(folder / "config.json"))
    return path


def _run_detector(detector: Sam3Model, size: int):
    ids, mask = tokenize(bundled_tokenizer(), ["liver"])
    torch.manual_seed(0)
    pixels = torch.rand(1, 3, size, size) * 2 - 1
    with torch.inference_mode():
        return detector(pixel_values=pixels, input_ids=ids, attention_mask=mask)


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    convert.add_arguments(parser)
    return convert.run(parser.parse_args(list(argv)))


def test_2d_checkpoint_without_prefix_converts_to_an_image_model_that_says_why_it_only_detects(tiny_video, tmp_path):
    native = transformers_to_native(tiny_video.detector_model.state_dict())
    bare = {k[len("detector."):]: v for k, v in native.items()}
    assert not any(k.startswith(("detector.", "tracker.")) for k in bare)
    source = _trainer_checkpoint(bare, tmp_path / "release", tiny_video.config)

    report = convert_checkpoint(source, tmp_path / "converted")
    assert report["layout"] == "native SAM3" and report["unmapped"] == [] and "no tracker" in report["tracker"]
    bundle = load_model(tmp_path / "converted", device="cpu")
    assert not bundle.has_tracker and "no tracker, so it runs in detect mode" in bundle.source
    reference = tiny_video.detector_model.state_dict()
    assert all(torch.equal(t, reference[k]) for k, t in bundle.detector.state_dict().items())

    from medsam3_core.phantom import make_abdomen_phantom
    from medsam3_core.segmenter import SegmentOptions
    from medsam3_core.segmenters.local import LocalSegmenter

    volume = make_abdomen_phantom(shape=(3, 40, 40))[0]
    result = LocalSegmenter(bundle).segment(volume, ["liver"], SegmentOptions(mode="track", threshold=0.0))
    assert result.options.mode == "detect" and any("no (trained) tracker" in w for w in result.warnings)


def test_3d_checkpoint_converts_at_its_own_image_size(tiny_video, tmp_path):
    source = _trainer_checkpoint(transformers_to_native(tiny_video.state_dict()), tmp_path / "release",
                                 tiny_video.config)
    assert _cli(str(source), str(tmp_path / "converted"), "--image-size", str(NON_DEFAULT_SIZE)) == 0
    config = json.loads((tmp_path / "converted" / "config.json").read_text())
    assert config["detector_config"]["vision_config"]["backbone_config"]["image_size"] == NON_DEFAULT_SIZE
    assert json.loads((tmp_path / "converted" / "medsam3.json").read_text())["image_size"] == NON_DEFAULT_SIZE

    bundle = load_model(tmp_path / "converted", device="cpu")
    assert bundle.has_tracker and bundle.image_size == NON_DEFAULT_SIZE
    assert bundle.tracker.config.image_size == NON_DEFAULT_SIZE
    # same weights as the 112-px original; the same model built for 84 px by hand gives the same outputs
    reference = Sam3VideoModel(with_image_size(tiny_video.config, NON_DEFAULT_SIZE)).eval()
    reference.load_state_dict(tiny_video.state_dict())
    got, expected = _run_detector(bundle.detector, NON_DEFAULT_SIZE), _run_detector(reference.detector_model,
                                                                                     NON_DEFAULT_SIZE)
    assert got.pred_masks.shape[-1] == 4 * NON_DEFAULT_SIZE // 14
    torch.testing.assert_close(got.pred_logits, expected.pred_logits, atol=1e-5, rtol=1e-4)


def test_image_size_must_be_a_multiple_of_the_patch_size(tiny_video, tmp_path, capsys):
    source = _trainer_checkpoint(transformers_to_native(tiny_video.state_dict()), tmp_path / "r", tiny_video.config)
    assert _cli(str(source), str(tmp_path / "out"), "--image-size", "100") == 2
    assert "multiple of the 14-px patch size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_release_file_name_brings_its_image_size(monkeypatch, tiny_video, tmp_path):
    from dataclasses import replace

    from medsam3_core.model.download import RELEASES

    rel = RELEASES["medsam3-3d"]
    monkeypatch.setitem(RELEASES, "medsam3-3d", replace(rel, image_size=NON_DEFAULT_SIZE))
    folder = tmp_path / "release"
    source = _trainer_checkpoint(transformers_to_native(tiny_video.state_dict()), folder, tiny_video.config)
    source = source.rename(folder / rel.filename)
    report = convert_checkpoint(source, tmp_path / "converted")
    assert report["image_size"] == NON_DEFAULT_SIZE
    assert report["conventions"] == {"recommended_mode": "clips", "clip_length": 4}


def _lora_pair(rank: int, out_features: int, in_features: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return torch.randn(rank, in_features), torch.randn(out_features, rank)


@pytest.fixture()
def native_release(tiny_video, tmp_path) -> Path:
    return _trainer_checkpoint(transformers_to_native(tiny_video.state_dict()), tmp_path / "release",
                               tiny_video.config)


def test_raw_lora_on_the_fused_native_qkv_lands_on_q_k_and_v(tiny_video, native_release, tmp_path):
    hidden = tiny_video.config.detector_config.vision_config.backbone_config.hidden_size
    a, b = _lora_pair(2, 3 * hidden, hidden, seed=1)
    adapter = tmp_path / "lora.pt"
    torch.save({"state_dict": {f"module.{QKV}.lora_A.weight": a, f"module.{QKV}.lora_B.weight": b},
                "lora_alpha": 4, "epoch": 3}, adapter)
    report = convert_checkpoint(native_release, tmp_path / "merged", lora=adapter)
    assert report["lora"]["format"] == "raw state dict" and report["lora"]["scaling_source"] == "adapter file"
    merged = load_model(tmp_path / "merged", device="cpu").detector.state_dict()
    delta = (b @ a) * (4 / 2)
    base = tiny_video.state_dict()
    for part, name in zip(torch.chunk(delta, 3), ("q", "k", "v")):
        key = f"vision_encoder.backbone.layers.0.attention.{name}_proj.weight"
        torch.testing.assert_close(merged[key], base["detector_model." + key] + part)
    untouched = "vision_encoder.backbone.layers.1.attention.q_proj.weight"
    assert torch.equal(merged[untouched], base["detector_model." + untouched])


def test_raw_lora_in_transformers_names_without_alpha_uses_scaling_one(tiny_video, native_release, tmp_path):
    name = "detector_model.detr_decoder.layers.0.mlp.fc1"
    weight = tiny_video.state_dict()[name + ".weight"]
    a, b = _lora_pair(3, weight.shape[0], weight.shape[1], seed=2)
    adapter = tmp_path / "adapter.pt"
    torch.save({f"base_model.model.{name}.lora_A.default.weight": a,
                f"base_model.model.{name}.lora_B.default.weight": b}, adapter)
    report = convert_checkpoint(native_release, tmp_path / "merged", lora=adapter)
    assert report["lora"]["scaling_source"].startswith("default") and report["lora"]["scaling"] == "1 (rank 3)"
    merged = load_model(tmp_path / "merged", device="cpu").detector.state_dict()
    key = name[len("detector_model."):] + ".weight"
    torch.testing.assert_close(merged[key], weight + b @ a)

    assert _cli(str(native_release), str(tmp_path / "alpha6"), "--lora", str(adapter), "--lora-alpha", "6") == 0
    merged = load_model(tmp_path / "alpha6", device="cpu").detector.state_dict()
    torch.testing.assert_close(merged[key], weight + 2 * (b @ a))


def test_unknown_adapter_layouts_list_what_was_found(native_release, tmp_path, capsys):
    adapter = tmp_path / "adapter.pt"
    torch.save({"encoder.adapter_down.weight": torch.zeros(2, 2), "encoder.adapter_up.weight": torch.zeros(2, 2)},
               adapter)
    assert _cli(str(native_release), str(tmp_path / "out"), "--lora", str(adapter)) == 2
    err = capsys.readouterr().err
    assert "no '<layer>.lora_A.weight'" in err and "encoder.adapter_down.weight" in err
    assert err.count("error:") == 1 and err.splitlines()[-1].startswith("error:")
    assert not (tmp_path / "out").exists()

    torch.save({"detector.some_new_head.lora_A.weight": torch.zeros(2, 4),
                "detector.some_new_head.lora_B.weight": torch.zeros(4, 2)}, adapter)
    assert _cli(str(native_release), str(tmp_path / "out"), "--lora", str(adapter)) == 2
    assert "names no known SAM3 layer: detector.some_new_head.weight" in capsys.readouterr().err


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_an_adapter_holding_a_pickle_is_refused_in_one_line(native_release, tmp_path, capsys):
    adapter = tmp_path / "adapter.pt"
    torch.save({f"{QKV}.lora_A.weight": torch.zeros(2, 64), "hook": _Payload()}, adapter)
    assert _cli(str(native_release), str(tmp_path / "out"), "--lora", str(adapter)) == 2
    err = capsys.readouterr()
    assert "code ran" not in err.out
    assert err.err.count("error:") == 1 and "Traceback" not in err.err
    assert err.err.splitlines()[-1].startswith("error: Cannot read adapter.pt: it contains Python objects")

    peft_dir = tmp_path / "peft"
    peft_dir.mkdir()
    (peft_dir / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4}))
    (peft_dir / "adapter_model.bin").write_bytes(pickle.dumps({"x": _Payload()}))
    assert _cli(str(native_release), str(tmp_path / "out"), "--lora", str(peft_dir)) == 2
    err = capsys.readouterr()
    assert "code ran" not in err.out and err.err.count("error:") == 1 and "Traceback" not in err.err
    assert err.err.splitlines()[-1].startswith("error: Cannot read adapter_model.bin: it contains Python objects")
    assert not (tmp_path / "out").exists()


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    junk = tmp_path / "checkpoint_3D_checkpoint8.pt"
    junk.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(CheckpointError, match=r"is not a checkpoint: it is neither a PyTorch file nor safetensors"):
        load_model(junk, device="cpu")
    html = tmp_path / "model.safetensors"
    html.write_text("<html>Access denied</html>")
    with pytest.raises(CheckpointError, match="is not a checkpoint"):
        load_model(html, device="cpu")


@pytest.fixture(scope="module")
def release_at_84(tiny_video, tmp_path_factory) -> Path:
    """A 3D release converted the way ``medsam3 download medsam3-3d`` does: at its own (non-default) image size, naming
    clips of 4 as its recommended mode, and shipping the list of concepts it was trained on."""
    from medsam3_core.cli.main import main as medsam3

    folder = tmp_path_factory.mktemp("release84")
    source = _trainer_checkpoint(transformers_to_native(tiny_video.state_dict()), folder / "hub", tiny_video.config)
    assert medsam3(["convert", str(source), str(folder / "model"), "--image-size", str(NON_DEFAULT_SIZE)]) == 0
    meta = json.loads((folder / "model" / "medsam3.json").read_text())
    meta["conventions"] = {"recommended_mode": "clips", "clip_length": 4}
    (folder / "model" / "medsam3.json").write_text(json.dumps(meta))
    (folder / "model" / "vocabulary.txt").write_text("# trained concepts\nliver\nkidneys\nspleen\n")
    return folder / "model"


def test_a_non_default_size_model_runs_end_to_end_through_the_cli(release_at_84, tmp_path):
    """The image size is the model's: inference builds its input at 84 px (a 112-px input would not even run
    through a ViT built for 84), in the model's recommended mode, and maps prompts onto its vocabulary."""
    import nibabel as nib
    import numpy as np

    from medsam3_core.cli.main import main as medsam3
    from medsam3_core.io.reading import read_volume
    from medsam3_core.phantom import make_abdomen_phantom

    ct = make_abdomen_phantom(seed=4, shape=(6, 40, 48))[0]
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(ct.array, (2, 1, 0)).astype(np.int16), np.diag([0.8, 0.8, 2.5, 1])), scan)
    out = tmp_path / "out"
    code = medsam3(["infer", str(scan), "renal", "banana", "--model", str(release_at_84), "--device", "cpu",
                    "--progress", "none", "--threshold", "0.01", "-o", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["options"]["mode"] == "clips" and report["options"]["clip_length"] == 4
    assert [s["concept"] for s in report["segments"]] == ["kidneys", "banana"]
    assert any("'banana' is not among the 3 concepts" in w for w in report["warnings"])
    assert read_volume(out / "labels.nii.gz").same_geometry(read_volume(scan))

    from medsam3_core.model.bundle import load_model

    assert load_model(release_at_84, device="cpu").image_size == NON_DEFAULT_SIZE


def test_near_misses_name_the_nearest_known_concepts(release_at_84, tmp_path):
    from medsam3_core.model.bundle import load_model
    from medsam3_core.prompts import fit_to_vocabulary

    vocabulary = load_model(release_at_84, device="cpu").vocabulary
    assert vocabulary == ["liver", "kidneys", "spleen"]
    concepts, warnings = fit_to_vocabulary(["Kidney", "the livers", "splen", "hepatic"], vocabulary)
    assert concepts[:2] == ["kidneys", "liver"] and concepts[3] == "liver"  # folding, plural, synonym
    assert concepts[2] == "splen" and warnings == [
        "'splen' is not among the 3 concepts this model was trained on (nearest known: spleen); its result may be "
        "unreliable."
    ]


def test_training_takes_the_models_image_size(release_at_84):
    from training.config import ModelConfig
    from training.engine.modelling import build_model

    model = build_model(ModelConfig(init=str(release_at_84), image_size=112))
    assert model.image_size == NON_DEFAULT_SIZE
