"""``medsam3 download``: cache location, one-time conversion, and the messages users see when the Hub is out of reach.

The Hub is never contacted: ``huggingface_hub``'s download functions are replaced by fakes that either fail the
way the real ones do offline / without access, or "download" a tiny checkpoint from disk.
"""

import argparse
import shutil
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


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory) -> Path:
    """A folder as a Medical SAM3 release would be: a native trainer checkpoint (+ the tiny model's config)."""
    model = random_video_model(seed=3)
    folder = tmp_path_factory.mktemp("hub")
    torch.save({"model": transformers_to_native(model.state_dict()), "optimizer": {}, "epoch": 1}, folder / "ckpt.pt")
    model.config.to_json_file(str(folder / "config.json"))
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
    assert f"medsam3 convert <that file> {tmp_path / 'medsam3-3d'}" in message
    assert "run 'medsam3 download" not in message  # we are that command; do not send the user in a circle
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


def test_download_converts_once_and_the_name_then_loads(monkeypatch, tmp_path, tiny_release):
    calls = []

    def fake_download(repo_id, filename, local_dir):
        calls.append((repo_id, filename))
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_release / "ckpt.pt", target)
        shutil.copy(tiny_release / "config.json", target.parent / "config.json")
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    out = download_release("medsam3-3d", tmp_path)
    assert out == tmp_path / "medsam3-3d" and (out / "model.safetensors").is_file()
    assert calls == [("ChongCong/Medical-SAM3", RELEASES["medsam3-3d"].filename)]
    assert download_release("medsam3-3d", tmp_path) == out and len(calls) == 1  # cached: no second download

    bundle = load_model("medsam3-3d", device="cpu", cache_dir=tmp_path)
    assert bundle.has_tracker and bundle.source.startswith("medsam3-3d (")


def test_checksum_mismatch_is_refused(monkeypatch, tmp_path, tiny_release):
    monkeypatch.setitem(RELEASES, "medsam3-2d", download.Release("medsam3-2d", "o/r", "ckpt.pt", "d", "l", "0" * 64))
    fake_download = lambda repo_id, filename, local_dir: str(tiny_release / filename)  # noqa: E731
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(ModelError, match="SHA-256 mismatch"):
        download_release("medsam3-2d", tmp_path)
    assert not release_dir("medsam3-2d", tmp_path).exists()


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
