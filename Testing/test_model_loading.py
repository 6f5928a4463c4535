"""load_model: every way a user can name weights, and every way that can go wrong, on tiny random models."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import Sam3Model, Sam3VideoModel

from medsam3_core.model import bundle as model_module
from medsam3_core.model.checkpoints import Layout, read_weights, save_model
from medsam3_core.model.convert import transformers_to_native
from medsam3_core.errors import CheckpointError, DeviceError, ModelError
from medsam3_core.model.bundle import (
    DEMO_RANDOM_SOURCE,
    load_model,
    random_video_model,
    tiny_detector_config,
    tiny_video_config,
)
from medsam3_core.model.tokenizer import bundled_tokenizer


@pytest.fixture(scope="module")
def tiny_video() -> Sam3VideoModel:
    return random_video_model(seed=1)


@pytest.fixture(scope="module")
def video_dir(tiny_video, tmp_path_factory) -> Path:
    return save_model(tiny_video, tmp_path_factory.mktemp("models") / "video")


def _assert_same_weights(module: torch.nn.Module, reference: dict, prefix: str = "") -> None:
    state = module.state_dict()
    assert state, "nothing to compare"
    for name, tensor in state.items():
        assert torch.equal(tensor, reference[prefix + name].to(tensor.dtype)), prefix + name


def test_demo_falls_back_to_a_plainly_labelled_random_model(monkeypatch, tmp_path):
    monkeypatch.setattr(model_module, "DEMO_MODEL_DIR", tmp_path / "absent")
    calls = []
    bundle = load_model("demo", device="cpu", progress=lambda stage, f: calls.append((stage, f)))
    assert bundle.source == DEMO_RANDOM_SOURCE and "meaningless" in bundle.source
    assert bundle.has_tracker and bundle.dtype == torch.float32
    assert calls[0] == ("load", 0.0) and calls[-1] == ("load", 1.0)


def test_demo_model_folder_in_half_precision_is_cast_to_the_run_dtype(tiny_video, monkeypatch, tmp_path):
    half = Sam3VideoModel(tiny_video.config)
    half.load_state_dict(tiny_video.state_dict())
    save_model(half.to(torch.float16), tmp_path / "demo_model")
    monkeypatch.setattr(model_module, "DEMO_MODEL_DIR", tmp_path / "demo_model")
    bundle = load_model("demo", device="cpu")
    assert bundle.source == "demo model" and bundle.detector.dtype == torch.float32
    reference = {k: v.half().float() for k, v in tiny_video.state_dict().items()}
    _assert_same_weights(bundle.detector, reference, "detector_model.")


def test_transformers_folder_loads_detector_tracker_and_its_tokenizer(tiny_video, video_dir, tmp_path):
    bundle = load_model(str(video_dir), device="cpu")
    reference = tiny_video.state_dict()
    _assert_same_weights(bundle.detector, reference, "detector_model.")
    _assert_same_weights(bundle.tracker, reference, "tracker_model.")
    _assert_same_weights(bundle.tracker_neck, reference, "tracker_neck.")
    assert bundle.image_size == 112 and bundle.source == str(video_dir)

    with_tok = save_model(tiny_video, tmp_path / "with_tokenizer", tokenizer=bundled_tokenizer())
    assert (with_tok / "tokenizer.json").is_file()
    tok = load_model(with_tok, device="cpu").tokenizer
    assert tok is not bundled_tokenizer()
    assert tok(["left kidney"])["input_ids"] == bundled_tokenizer()(["left kidney"])["input_ids"]


def test_detector_only_folder_gives_a_bundle_without_tracker(tmp_path):
    torch.manual_seed(2)
    detector = Sam3Model(tiny_detector_config()).eval()
    bundle = load_model(save_model(detector, tmp_path / "det"), device="cpu")
    assert bundle.tracker is None and not bundle.has_tracker
    _assert_same_weights(bundle.detector, detector.state_dict())


@pytest.mark.parametrize("names", ["transformers", "native"])
def test_bare_safetensors_file_with_config_beside_it(tiny_video, tmp_path, names):
    state = {k: v.contiguous() for k, v in tiny_video.state_dict().items()}
    if names == "native":
        state = {k: v.contiguous() for k, v in transformers_to_native(state).items()}
    save_file(state, str(tmp_path / "weights.safetensors"))
    tiny_video.config.to_json_file(str(tmp_path / "config.json"))
    bundle = load_model(tmp_path / "weights.safetensors", device="cpu")
    _assert_same_weights(bundle.tracker, tiny_video.state_dict(), "tracker_model.")


def test_trainer_checkpoint_with_optimizer_state_loads_only_the_model(tiny_video, tmp_path):
    native = transformers_to_native(tiny_video.state_dict())
    blob = {"model": native, "optimizer": {"state": {0: {"exp_avg": torch.ones(5)}}, "param_groups": []},
            "epoch": 2, "loss": 0.5, "steps": {"train": 100}, "time_elapsed": 12.0, "best_meter_values": {}}
    torch.save(blob, tmp_path / "checkpoint.pt")
    raw = read_weights(tmp_path / "checkpoint.pt")
    assert raw.layout == Layout.NATIVE and "optimizer" in raw.dropped and "epoch" in raw.dropped
    bundle = load_model(tmp_path / "checkpoint.pt", device="cpu", config=tiny_video.config)
    _assert_same_weights(bundle.detector, tiny_video.state_dict(), "detector_model.")


def test_folder_with_a_single_checkpoint_file_is_accepted(tiny_video, tmp_path):
    (tmp_path / "release").mkdir()
    torch.save({"model": transformers_to_native(tiny_video.state_dict())}, tmp_path / "release" / "sam3.pt")
    tiny_video.config.to_json_file(str(tmp_path / "release" / "config.json.bak"))
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path, device="cpu")  # a folder holding a folder: nothing to load
    bundle = load_model(tmp_path / "release", device="cpu", config=tiny_video.config)
    assert bundle.has_tracker


def test_missing_weights_are_refused_with_their_names(tiny_video, tmp_path):
    state = {k: v for k, v in tiny_video.state_dict().items() if ".mask_decoder." not in k}
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path / "partial.pt", device="cpu", config=tiny_video.config)
    message = str(err.value)
    assert "refusing" in message and "mask_decoder" in message and "more)" in message
    assert len(message) < 600, "one actionable line, not a dump"


def test_wrong_architecture_is_refused(tiny_video, tmp_path):
    torch.save(tiny_video.state_dict(), tmp_path / "tiny.pt")
    bigger = tiny_video_config(tiny_detector_config(hidden=256))
    with pytest.raises(CheckpointError, match=r"does not fit.*wrong shape \(detector_model\.") as err:
        load_model(tmp_path / "tiny.pt", device="cpu", config=bigger)
    assert "config.json" in str(err.value)


def test_corrupt_and_unsafe_files_are_refused(tmp_path):
    truncated = tmp_path / "truncated.pt"
    torch.save({"model": {"detector.x": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="Cannot read checkpoint truncated.pt"):
        load_model(truncated, device="cpu")

    class Payload:
        def __reduce__(self):
            return (print, ("code ran",))

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": {"detector.x": torch.zeros(1)}, "extra": Payload()}, unsafe)
    with pytest.raises(CheckpointError, match="never unpickle"):
        load_model(unsafe, device="cpu")

    legacy = tmp_path / "legacy.pkl.pt"
    legacy.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError):
        load_model(legacy, device="cpu")

    foreign = tmp_path / "resnet.safetensors"
    save_file({"conv1.weight": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="neither SAM3"):
        load_model(foreign, device="cpu")


def test_unknown_names_and_paths_are_model_errors(tmp_path):
    with pytest.raises(ModelError, match="not found.*demo, sam3, medsam3-2d, medsam3-3d"):
        load_model(tmp_path / "nothing_here", device="cpu")
    with pytest.raises(ModelError, match=r"medsam3 download medsam3-3d.*ChongCong/Medical-SAM3"):
        load_model("medsam3-3d", device="cpu", cache_dir=tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_device_error_before_any_loading(tmp_path):
    with pytest.raises(DeviceError, match="choose the CPU device"):
        load_model(tmp_path / "not even checked", device="cuda")


def test_unknown_native_tensors_are_reported(tiny_video, tmp_path, caplog):
    native = transformers_to_native(tiny_video.state_dict())
    native["detector.future_head.weight"] = torch.zeros(3)
    torch.save({"model": native}, tmp_path / "newer.pt")
    with caplog.at_level("WARNING", logger="medsam3_core.model.bundle"):
        load_model(tmp_path / "newer.pt", device="cpu", config=tiny_video.config)
    assert "detector.future_head.weight" in caplog.text


def test_geometry_cls_token_is_appended_to_text_prompts_without_torchvision(tiny_video):
    from medsam3_core.model.bundle import append_geometry_cls
    from medsam3_core.model.tokenizer import tokenize

    detector = tiny_video.detector_model
    ids, mask = tokenize(bundled_tokenizer(), ["liver", "spleen"])
    pixels = torch.rand(1, 3, 112, 112) * 2 - 1
    with torch.inference_mode():
        vision = detector.get_vision_features(pixel_values=pixels)
        text = detector.get_text_features(input_ids=ids, attention_mask=mask, return_dict=True)
        text_cls, mask_cls = append_geometry_cls(detector, vision, text, mask)
        again, _ = append_geometry_cls(detector, vision, text, mask)
    assert text_cls.pooler_output.shape == (2, 33, 128) and mask_cls.shape == (2, 33)
    assert torch.equal(text_cls.pooler_output[:, :32], text.pooler_output) and mask_cls[:, 32].tolist() == [1, 1]
    assert torch.equal(text_cls.pooler_output[0, 32], text_cls.pooler_output[1, 32])  # one image, one CLS token
    assert torch.equal(again.pooler_output, text_cls.pooler_output) and text.pooler_output.shape[1] == 32
    assert "_encode_boxes" not in vars(detector.geometry_encoder)  # the temporary bypass is gone


def test_saved_folder_is_readable_as_the_umask_allows(tiny_video, tmp_path):
    import os

    old = os.umask(0o022)
    try:
        folder = save_model(tiny_video, tmp_path / "shared")
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o644}


def test_input_conventions_default_to_metas_and_follow_the_folder(tiny_video, tmp_path):
    """Weights that state nothing get Meta's conventions (stretch + CLS); our exports state their own."""
    meta_style = save_model(tiny_video, tmp_path / "meta")
    bundle = load_model(str(meta_style), device="cpu")
    assert (bundle.keep_aspect, bundle.geometry_cls) == (False, True)
    conventions = {"keep_aspect": True, "geometry_cls": False}
    ours = save_model(tiny_video, tmp_path / "ours", extra={"conventions": conventions})
    bundle = load_model(str(ours), device="cpu")
    assert (bundle.keep_aspect, bundle.geometry_cls) == (True, False)


def test_score_threshold_comes_from_the_conventions(tiny_video, tmp_path):
    """A training export states its calibrated threshold; weights that state none (Meta's) run at 0.5."""
    from medsam3_core.errors import ModelError

    assert load_model(str(save_model(tiny_video, tmp_path / "meta")), device="cpu").score_threshold == 0.5
    stated = save_model(tiny_video, tmp_path / "stated", extra={"conventions": {"score_threshold": 0.35}})
    assert load_model(str(stated), device="cpu").score_threshold == 0.35
    for bad in (0, 1.0, "0.3", True, -0.2):
        (stated / "medsam3.json").write_text(json.dumps({"conventions": {"score_threshold": bad}}))
        with pytest.raises(ModelError, match="score_threshold must be a number between 0 and 1"):
            load_model(str(stated), device="cpu")


def test_untrained_tracker_is_not_used(tiny_video, tmp_path):
    folder = save_model(tiny_video, tmp_path / "untrained", extra={"conventions": {"tracker_trained": False}})
    bundle = load_model(str(folder), device="cpu")
    assert not bundle.has_tracker and "untrained" in bundle.source


def test_bundled_demo_model_states_how_it_was_trained():
    """The shipped demo was trained with letterbox, no CLS token and a random tracker: loading must honour that."""
    bundle = load_model("demo", device="cpu")
    assert (bundle.keep_aspect, bundle.geometry_cls, bundle.has_tracker) == (True, False, False)
