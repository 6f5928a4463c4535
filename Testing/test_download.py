"""``medsam3 download``: cache location, one-time conversion, and the messages users see when the Hub is out of reach.

The Hub is never contacted: ``huggingface_hub``'s download functions are replaced by fakes that either fail the
way the real ones do offline / without access, or "download" a tiny checkpoint from disk.
"""

import argparse
import hashlib
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import errors as hub_errors

from medsam3_core.model import download
from medsam3_core.model.checkpoints import save_model
from medsam3_core.model.convert import transformers_to_native
from medsam3_core.model.download import RELEASES, cache_root, download_release, release_dir
from medsam3_core.errors import ModelError
from medsam3_core.model.bundle import load_model, random_video_model


#: The tiny stand-in for the 3D release's own input size (504 for the real one): not the tiny default (112), and
#: like 504 a grid (6 patches) that is not a multiple of the ViT window (4 here, 24 in SAM3).
TINY_RELEASE_SIZE = 84


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory) -> Path:
    """A folder as the Medical SAM3 repository is: a native trainer checkpoint, a raw LoRA state dict (one layer),
    and the tiny model's config beside them (how a tiny architecture travels)."""
    model = random_video_model(seed=3)
    folder = tmp_path_factory.mktemp("hub")
    torch.save({"model": transformers_to_native(model.state_dict()), "optimizer": {}, "epoch": 1}, folder / "ckpt.pt")
    model.config.to_json_file(str(folder / "config.json"))
    fc1 = "detector.backbone.vision_backbone.trunk.blocks.0.mlp.fc1"
    torch.manual_seed(5)
    lora = {f"{fc1}.lora_A.weight": torch.randn(2, 64), f"{fc1}.lora_B.weight": torch.randn(128, 2)}
    torch.save(lora, folder / "adapter.pt")
    return folder


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    download.add_arguments(parser)
    return parser


def test_cache_root_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv(download.HOME_ENV, raising=False)
    assert cache_root() == Path.home() / ".cache" / "medsam3"
    monkeypatch.setenv(download.HOME_ENV, str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert release_dir("sam3", tmp_path) == tmp_path / "sam3"


def test_offline_gives_one_line_saying_what_to_fetch_and_where(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise hub_errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(ModelError) as err:
        download_release("medsam3-3d", tmp_path)
    message = str(err.value)
    assert "\n" not in message and "ChongCong/Medical-SAM3" in message and RELEASES["medsam3-3d"].filename in message
    assert f"medsam3 convert <that file> {tmp_path / 'medsam3-3d'} --image-size 504" in message
    assert "run 'medsam3 download" not in message  # we are that command; do not send the user in a circle
    with pytest.raises(ModelError) as err:
        download_release("medsam3-3d-lora2d", tmp_path)
    message = str(err.value)
    assert "download checkpoint_3D_checkpoint8.pt and checkpoint_3D_LoRA2D.pt from" in message
    assert f"{tmp_path / 'medsam3-3d-lora2d'} --lora <adapter> --image-size 504" in message
    with pytest.raises(ModelError, match=rf"facebook/sam3 .*into {tmp_path / 'sam3'}"):
        download_release("sam3", tmp_path)


def test_gated_repository_says_how_to_get_access(monkeypatch, tmp_path):
    import httpx

    response = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co/facebook/sam3"))

    def gated(*args, **kwargs):
        raise hub_errors.GatedRepoError("gated", response=response)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", gated)
    with pytest.raises(ModelError, match="accept its licence.*HF_TOKEN"):
        download_release("sam3", tmp_path)


class FakeHub:
    """A stand-in for ``huggingface_hub.hf_hub_download`` as strict as the real one where it matters here.

    Like the real client with ``local_dir``, it streams into
    ``local_dir/.cache/huggingface/download/<file>.incomplete``,
    resumes from that file's end on the next call, and moves it into place only when complete. ``cut_after`` bytes
    into a file it fails the way a dropped connection does (the client's HTTP transport error once its own retries
    are spent, or an ``OSError``), leaving the partial file behind.
    """

    def __init__(self, files: dict, beside: dict) -> None:
        self.files = files  # filename -> bytes
        self.beside = beside  # written next to the downloads (the tiny architecture's config.json)
        self.served: list[tuple[str, int]] = []  # (filename, bytes sent by this call)
        self.cut_after = None
        self.failure: Exception = ConnectionError("connection reset by peer")

    def __call__(self, repo_id, filename, local_dir):
        if filename not in self.files:
            raise hub_errors.RemoteEntryNotFoundError(f"404 {filename}", response=None)
        target = Path(local_dir) / filename
        Path(local_dir).mkdir(parents=True, exist_ok=True)
        for name, data in self.beside.items():
            (Path(local_dir) / name).write_bytes(data)
        if target.is_file():
            self.served.append((filename, 0))
            return str(target)
        partial = Path(local_dir) / ".cache" / "huggingface" / "download" / (filename + ".incomplete")
        partial.parent.mkdir(parents=True, exist_ok=True)
        data, have = self.files[filename], partial.stat().st_size if partial.is_file() else 0
        end = len(data) if self.cut_after is None else min(len(data), have + self.cut_after)
        with open(partial, "ab") as handle:
            handle.write(data[have:end])
        self.served.append((filename, end - have))
        if end < len(data):
            raise self.failure
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.replace(target)
        return str(target)


def _published(data: bytes, filename: str) -> download.HubFile:
    return download.HubFile(filename, len(data), hashlib.sha256(data).hexdigest())


@pytest.fixture()
def tiny_hub(monkeypatch, tiny_release):
    """The Medical SAM3 releases pointed at tiny files with their true sizes and checksums, served by a FakeHub."""
    ckpt = (tiny_release / "ckpt.pt").read_bytes()
    adapter = (tiny_release / "adapter.pt").read_bytes()
    config = (tiny_release / "config.json").read_bytes()
    hub = FakeHub({"ckpt.pt": ckpt, "adapter.pt": adapter}, {"config.json": config})
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hub)
    for name in ("medsam3-3d", "medsam3-3d-lora2d"):
        rel = RELEASES[name]
        changed = replace(rel, checkpoint=_published(ckpt, "ckpt.pt"), image_size=TINY_RELEASE_SIZE,
                          adapter=_published(adapter, "adapter.pt") if rel.adapter else None)
        monkeypatch.setitem(RELEASES, name, changed)
    return hub


def test_catalogue_names_the_published_files_sizes_and_checksums():
    assert RELEASES["sam3"].repo_id == "facebook/sam3" and RELEASES["sam3"].gated
    two_d, three_d, lora = RELEASES["medsam3-2d"], RELEASES["medsam3-3d"], RELEASES["medsam3-3d-lora2d"]
    assert {two_d.repo_id, three_d.repo_id, lora.repo_id} == {"ChongCong/Medical-SAM3"}
    assert not (two_d.gated or three_d.gated or lora.gated) and "MIT" in three_d.licence
    assert two_d.filename == "checkpoint_2D.pt" and two_d.checkpoint.sha256.startswith("f7fb9f20")
    assert three_d.checkpoint == download.HubFile(
        "checkpoint_3D_checkpoint8.pt", 10_302_254_109,
        "31fd6a05995800dd1de888d71249d8357d0804a471266343f43d104eda49440e")
    assert lora.checkpoint == three_d.checkpoint and lora.adapter == download.HubFile(
        "checkpoint_3D_LoRA2D.pt", 18_553_261, "8fafe9b5e148786f9ff5344b798cc4471983567b5506c24bdeb93fa26d042092")
    assert (three_d.image_size, three_d.recommended_mode, three_d.clip_length) == (504, "clips", 4)
    assert (two_d.image_size, two_d.recommended_mode, RELEASES["sam3"].image_size) == (1008, "detect", 1008)


def test_download_verifies_converts_once_and_the_name_then_loads(tmp_path, tiny_hub):
    out = download_release("medsam3-3d", tmp_path)
    assert out == tmp_path / "medsam3-3d" and (out / "model.safetensors").is_file()
    assert tiny_hub.served == [("ckpt.pt", len(tiny_hub.files["ckpt.pt"]))]
    assert download_release("medsam3-3d", tmp_path) == out and len(tiny_hub.served) == 1  # cached: no download

    meta = json.loads((out / "medsam3.json").read_text())
    assert meta["conventions"] == {"recommended_mode": "clips", "clip_length": 4}
    assert meta["image_size"] == TINY_RELEASE_SIZE
    bundle = load_model("medsam3-3d", device="cpu", cache_dir=tmp_path)
    assert bundle.has_tracker and bundle.source.startswith("medsam3-3d (") and bundle.image_size == TINY_RELEASE_SIZE
    assert bundle.recommended_mode == "clips" and bundle.clip_length == 4


def test_a_checksum_mismatch_deletes_the_file_and_converts_nothing(monkeypatch, tmp_path, tiny_hub):
    rel = RELEASES["medsam3-3d"]
    wrong = replace(rel.checkpoint, sha256="0" * 64)
    monkeypatch.setitem(RELEASES, "medsam3-3d", replace(rel, checkpoint=wrong))
    with pytest.raises(ModelError, match=r"ckpt.pt does not match the published SHA-256.*deleted.*nothing was conv"):
        download_release("medsam3-3d", tmp_path)
    assert not release_dir("medsam3-3d", tmp_path).exists()
    assert not list((tmp_path / "downloads").rglob("ckpt.pt"))  # the next run fetches it afresh
    monkeypatch.setitem(RELEASES, "medsam3-3d", replace(rel, checkpoint=replace(rel.checkpoint, size=5)))
    with pytest.raises(ModelError, match=r"ckpt.pt is [\d,]+ bytes, expected 5;"):
        download_release("medsam3-3d", tmp_path)


def _transport_error() -> Exception:
    """What the Hub client raises when a transfer drops and its own retries are spent."""
    httpx = pytest.importorskip("httpx2" if importlib.util.find_spec("httpx2") else "httpx")
    return httpx.RemoteProtocolError("peer closed connection without sending complete message body")


@pytest.mark.parametrize("failure", [lambda: ConnectionError("connection reset by peer"), _transport_error])
def test_an_interrupted_download_resumes_where_it_stopped(tmp_path, tiny_hub, failure):
    size = len(tiny_hub.files["ckpt.pt"])
    tiny_hub.cut_after, tiny_hub.failure = size // 3, failure()
    with pytest.raises(ModelError, match="Cannot download from the Hugging Face Hub"):
        download_release("medsam3-3d", tmp_path)
    assert not release_dir("medsam3-3d", tmp_path).exists()  # a partial file is never converted
    tiny_hub.cut_after = None
    out = download_release("medsam3-3d", tmp_path)
    assert [n for _, n in tiny_hub.served] == [size // 3, size - size // 3]  # the second call sent only the rest
    assert (out / "config.json").is_file()


def test_the_lora_release_merges_its_adapter_into_the_3d_checkpoint(tmp_path, tiny_hub, tiny_release):
    out = download_release("medsam3-3d-lora2d", tmp_path)
    assert [f for f, _ in tiny_hub.served] == ["ckpt.pt", "adapter.pt"]
    meta = json.loads((out / "medsam3.json").read_text())
    assert meta["lora"]["format"] == "raw state dict" and meta["lora"]["layers"] == 1
    merged = load_model(out, device="cpu").detector.state_dict()
    base = random_video_model(seed=3).state_dict()
    name = "vision_encoder.backbone.layers.0.mlp.fc1.weight"
    assert not torch.equal(merged[name], base["detector_model." + name])
    download_release("medsam3-3d", tmp_path)  # shares the checkpoint: no second download of it
    assert [f for f, n in tiny_hub.served if n] == ["ckpt.pt", "adapter.pt"]


def test_checksum_is_checked_for_the_adapter_too(monkeypatch, tmp_path, tiny_hub):
    rel = RELEASES["medsam3-3d-lora2d"]
    monkeypatch.setitem(RELEASES, rel.name, replace(rel, adapter=replace(rel.adapter, sha256="1" * 64)))
    with pytest.raises(ModelError, match="adapter.pt does not match"):
        download_release(rel.name, tmp_path)
    assert not release_dir(rel.name, tmp_path).exists()


def test_hub_folder_release_is_validated_and_copied(monkeypatch, tmp_path):
    hub_copy = save_model(random_video_model(seed=4), tmp_path / "hub_snapshot")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, local_dir, allow_patterns: str(hub_copy))
    out = download_release("sam3", tmp_path / "cache")
    assert (out / "config.json").is_file()
    assert load_model("sam3", device="cpu", cache_dir=tmp_path / "cache").has_tracker


def test_cli_lists_and_reports_errors_with_exit_code_2(monkeypatch, tmp_path, capsys):
    assert download.run(_parser().parse_args(["--cache-dir", str(tmp_path)])) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in RELEASES) and "not downloaded" in listing

    def offline(*args, **kwargs):
        raise hub_errors.LocalEntryNotFoundError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    assert download.run(_parser().parse_args(["medsam3-2d", "--cache-dir", str(tmp_path)])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot download") and err.count("\n") == 1

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", interrupted)
    assert download.run(_parser().parse_args(["medsam3-2d", "--cache-dir", str(tmp_path)])) == 3
    assert "resume" in capsys.readouterr().err
