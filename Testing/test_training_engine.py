"""End-to-end training runs on a tiny model: learning, exact resume, 2-process DDP, LoRA, export → load_model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.config import DataConfig, EngineConfig, ModelConfig, SourceConfig, TrainConfig
from training.losses.criterion import LossConfig
from training.optim import OptimConfig

ROOT = Path(__file__).resolve().parents[1]


def _blob_folder(root: Path, prefix: str, count: int, shape: tuple[int, int], seed: int, place) -> Path:
    """A 2D folder dataset of ``count`` noisy pictures, each with one bright rectangle ("blob") where
    ``place(rng) -> (y, x, height, width)`` puts it."""
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        img = rng.normal(60, 12, shape)
        mask = np.zeros(shape, np.uint8)
        y, x, h, w = place(rng)
        img[y : y + h, x : x + w] += 120
        mask[y : y + h, x : x + w] = 1
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"{prefix}{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"{prefix}{i:02d}.png")
    (root / "labels.json").write_text(json.dumps({"1": "blob"}))
    return root


def _random_square(rng):
    y, x = rng.integers(4, 30, size=2)
    s = rng.integers(12, 22)
    return y, x, s, s


@pytest.fixture(scope="module")
def blobs(tmp_path_factory) -> Path:
    """16 noisy 56² pictures, each with one bright square ("blob") at a random place."""
    return _blob_folder(tmp_path_factory.mktemp("blobs"), "b", 16, (56, 56), 0, _random_square)


def _config(data: Path, out: Path, **engine) -> TrainConfig:
    lr = dict(lr_decoder=1e-3, lr_vision=1e-3, lr_text=1e-3, lr_geometry=1e-3)
    return TrainConfig(
        name="test",
        output_dir=str(out),
        model=ModelConfig(init="tiny", tracker=False, image_size=56, patch_size=14, hidden=32, vit_hidden=32,
                          vit_layers=2, text_hidden=32, num_queries=8),
        data=DataConfig(sources=[SourceConfig(kind="folder2d", path=str(data), name="blobs")], batch_size=4,
                        augment=False, val_max_images=8),
        loss=LossConfig(),
        optim=OptimConfig(warmup_steps=5, grad_clip=1.0, weight_decay=0.0, llrd_levels=2, **lr),
        engine=EngineConfig(**{"epochs": 1, "steps_per_epoch": 100, "checkpoint_every": 3, "device": "cpu",
                               "score_threshold": 0.0, **engine}),
    )


def _train(cfg: TrainConfig) -> list[float]:
    from training.engine.trainer import Trainer

    losses: list[float] = []
    trainer = Trainer(cfg, on_step=lambda step, logs: losses.append(logs["loss"]))
    try:
        trainer.fit()
    finally:
        trainer.close()
    return losses


def _dice(cfg: TrainConfig, model_dir: Path) -> float:
    from medsam3_core.model.bundle import load_model
    from training.data.sources import build_datasets
    from training.evaluate import evaluate_model, summarize

    bundle = load_model(str(model_dir), device="cpu")
    train_sets, _, _ = build_datasets(cfg.data, cfg.model.image_size, 0)
    rows = summarize(evaluate_model(bundle, train_sets, threshold=0.0))
    return next(r.dice for r in rows if r.concept == "all")


def test_short_run_lowers_the_loss_and_raises_dice(blobs, tmp_path):
    cfg = _config(blobs, tmp_path / "learn", max_steps=0)
    cfg.engine.steps_per_epoch = 80
    cfg.engine.checkpoint_every = 100
    before = tmp_path / "before"
    from training.engine.modelling import build_model, export_weights

    export_weights(build_model(cfg.model), before)
    losses = _train(cfg)
    assert len(losses) == 80
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])
    dice_before, dice_after = _dice(cfg, before), _dice(cfg, tmp_path / "learn" / "final")
    assert dice_after > dice_before + 0.15, (dice_before, dice_after)


def test_kill_and_resume_continues_exactly(blobs, tmp_path):
    straight = _train(_config(blobs, tmp_path / "a", max_steps=6))
    first = _train(_config(blobs, tmp_path / "b", max_steps=3))  # "killed" after the step-3 checkpoint
    resumed = _train(_config(blobs, tmp_path / "b", max_steps=6))
    assert len(straight) == 6 and len(first) == 3 and len(resumed) == 3
    np.testing.assert_allclose(first + resumed, straight, rtol=1e-5)
    state = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert state["step"] == 6 and state["position"] == 6 * 4


def test_lora_trains_adapters_only_and_exports_a_plain_model(blobs, tmp_path):
    from medsam3_core.model.bundle import load_model
    from training.engine.trainer import Trainer

    cfg = _config(blobs, tmp_path / "lora", max_steps=2)
    cfg.model.lora_rank = 4
    trainer = Trainer(cfg)
    trainable = sum(p.numel() for p in trainer.trainable.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.trainable.parameters())
    assert 0 < trainable < 0.1 * total
    trainer.fit()
    trainer.close()
    bundle = load_model(str(tmp_path / "lora" / "final"), device="cpu")
    assert not any("lora" in name for name, _ in bundle.detector.named_parameters())


@pytest.mark.slow
def test_two_process_gloo_ddp_run(blobs, tmp_path):
    """Two epochs' worth of steps: validation on both ranks and rank 0's ``best`` export happen mid-training, and
    training must go on after them (an export that touched the live model once left DDP waiting forever)."""
    cfg = _config(blobs, tmp_path / "ddp", max_steps=3)
    cfg.engine.epochs, cfg.engine.steps_per_epoch = 2, 2
    path = tmp_path / "ddp.json"
    path.write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "training.run", "--config", str(path)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert state["step"] == 3 and state["world_size"] == 2
    assert state["position"] == 1 * 4  # each rank consumed its own batch of 4 of the second epoch
    assert all((tmp_path / "ddp" / name / "config.json").is_file() for name in ("best", "final"))
    assert done.stdout.count("validation after epoch") == 2  # epoch 1's end, then the final weights
    assert done.stdout.count("done:") == 1  # rank 0 reports, rank 1 stays quiet


def test_run_reports_config_errors_in_one_line(tmp_path, capsys):
    from training.run import main

    assert main(["--config", "paper", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.strip().startswith("error: data.sources is empty") and "Traceback" not in err
    assert main(["--config", "demo", "--set", "engine.epochs=0"]) == 2
    assert "engine.epochs must be ≥ 1" in capsys.readouterr().err


def test_detector_tracker_model_round_trips_through_training_init(tmp_path):
    from training.engine.modelling import build_model, export_weights

    tiny = ModelConfig(init="tiny", hidden=128, vit_hidden=32, vit_layers=2, text_hidden=32, num_queries=8)
    export_weights(build_model(tiny), tmp_path / "start", dtype=torch.float32)
    again = build_model(ModelConfig(init=str(tmp_path / "start")))
    assert type(again.root).__name__ == "Sam3VideoModel" and again.detector is again.root.detector_model
    export_weights(again, tmp_path / "again", dtype=torch.float32)
    start_cfg = json.loads((tmp_path / "start" / "config.json").read_text())
    again_cfg = json.loads((tmp_path / "again" / "config.json").read_text())
    assert start_cfg == again_cfg
    from safetensors.torch import load_file

    a, b = load_file(tmp_path / "start" / "model.safetensors"), load_file(tmp_path / "again" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_activation_checkpointing_gives_the_same_gradients():
    from transformers import Sam3Model

    from medsam3_core.model.bundle import tiny_detector_config
    from training.engine.modelling import enable_activation_checkpointing

    torch.manual_seed(0)
    model = Sam3Model(tiny_detector_config(image_size=56, hidden=32, vit_hidden=32)).train()
    px, ids = torch.randn(2, 3, 56, 56), torch.randint(0, 1000, (2, 32))

    def grads():
        model.zero_grad()
        model(pixel_values=px, input_ids=ids).pred_masks.square().mean().backward()
        return model.vision_encoder.backbone.layers[0].mlp.fc1.weight.grad.clone()

    plain = grads()
    assert enable_activation_checkpointing(model) == 2
    calls = []
    for layer in model.vision_encoder.backbone.layers:
        inner = layer._gradient_checkpointing_func
        layer._gradient_checkpointing_func = lambda *a, inner=inner, **k: calls.append(1) or inner(*a, **k)
    torch.testing.assert_close(grads(), plain)
    assert len(calls) == 2  # both ViT blocks ran through torch.utils.checkpoint


@pytest.fixture(scope="module")
def wide_blobs(tmp_path_factory) -> Path:
    """Like ``blobs`` but 8 pictures of 28×56 with a 10×14 blob, so letterbox (padded rows) and stretch (none) give
    different inputs."""
    return _blob_folder(tmp_path_factory.mktemp("wide_blobs"), "w", 8, (28, 56), 1,
                        lambda rng: (rng.integers(2, 14), rng.integers(4, 36), 10, 14))


def test_fine_tuning_meta_weights_keeps_their_input_conventions(wide_blobs, tmp_path):
    """A checkpoint without medsam3.json is Meta's (stretch + geometry CLS token): training feeds it that way and
    the export says so, instead of silently switching it to our letterbox / no-CLS convention."""
    from training.engine.trainer import Trainer
    from training.engine.modelling import build_model, export_weights

    cfg = _config(wide_blobs, tmp_path / "meta_ft", max_steps=2)
    export_weights(build_model(cfg.model), tmp_path / "meta", dtype=torch.float32)  # no medsam3.json: Meta's
    cfg.model.init = str(tmp_path / "meta")
    trainer = Trainer(cfg)
    detector = trainer.model.detector
    pixels, prompt_lengths = [], []
    detector.vision_encoder.register_forward_pre_hook(lambda _m, args: pixels.append(args[0].detach().clone()))
    detector.detr_encoder.register_forward_pre_hook(
        lambda _m, _a, kwargs: prompt_lengths.append(kwargs["text_features"].shape[1]), with_kwargs=True)
    try:
        trainer.fit()
    finally:
        trainer.close()
    token_length = trainer._tokens_for(["blob"])[0].shape[1]
    training_inputs = pixels[:2]  # two steps come first, then validation
    assert all(x.shape[-2:] == (56, 56) for x in training_inputs)
    # letterboxed, rows 28–55 of a 28×56 picture would be padding (exactly -1); stretched, the picture fills them
    assert all((x[:, :, 28:] > -1).any() for x in training_inputs)
    assert set(prompt_lengths) == {token_length + 1}  # training and validation forwards got the CLS token
    conventions = json.loads((tmp_path / "meta_ft" / "final" / "medsam3.json").read_text())["conventions"]
    assert conventions["keep_aspect"] is False and conventions["geometry_cls"] is True
    assert 0.0 <= conventions["score_threshold"] <= 1.0


def test_tiny_model_keeps_our_conventions(wide_blobs, tmp_path):
    from training.engine.trainer import Trainer

    cfg = _config(wide_blobs, tmp_path / "ours", max_steps=1)
    trainer = Trainer(cfg)
    pixels, prompt_lengths = [], []
    trainer.model.detector.vision_encoder.register_forward_pre_hook(lambda _m, args: pixels.append(args[0]))
    trainer.model.detector.detr_encoder.register_forward_pre_hook(
        lambda _m, _a, kwargs: prompt_lengths.append(kwargs["text_features"].shape[1]), with_kwargs=True)
    try:
        trainer.fit()
    finally:
        trainer.close()
    assert torch.all(pixels[0][:, :, 28:] == -1)  # letterbox padding
    assert set(prompt_lengths) == {trainer._tokens_for(["blob"])[0].shape[1]}
    conventions = json.loads((tmp_path / "ours" / "final" / "medsam3.json").read_text())["conventions"]
    assert conventions["keep_aspect"] is True and conventions["geometry_cls"] is False


@pytest.mark.slow
def test_validation_on_two_ranks_equals_one_process(blobs, wide_blobs, tmp_path):
    """Each rank scores its shard of the validation slices; after the all-reduce both ranks hold exactly the metrics
    of one process scoring everything (no slice twice, none lost), also when a rank's shard is empty."""
    sys.path.insert(0, str(Path(__file__).parent))
    from ddp_validation_worker import validation_rows

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).with_name("ddp_validation_worker.py")), str(tmp_path), str(blobs), str(wide_blobs)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0 == rank1
    single = validation_rows([str(blobs), str(wide_blobs)])
    assert rank0.keys() == single.keys()
    for max_images, by_threshold in single.items():
        for threshold, rows in by_threshold.items():
            got = rank0[max_images][threshold]
            assert [(r["dataset"], r["concept"], r["n"], r["n_present"]) for r in got] == [
                (r["dataset"], r["concept"], r["n"], r["n_present"]) for r in rows]
            for a, b in zip(got, rows):
                assert (a["dice"], a["iou"]) == pytest.approx((b["dice"], b["iou"]), abs=1e-12)
    assert [r["n"] for r in single["0"]["0.0"] if r["concept"] == "all"] == [14, 7]  # 85 % of 16 and 8, each once
    assert any(r["dice"] > 0 for r in single["0"]["0.0"])  # the comparison is not between zeros
