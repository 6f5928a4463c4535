"""``medsam3 download``: fetch released weights once, verify them, convert them once, load them fast forever after.

Each release in :data:`RELEASES` is downloaded from the Hugging Face Hub into ``<cache>/downloads/<repo>/``
(resumable: an interrupted download continues where it stopped), checked against the size and SHA-256 its
repository publishes (a mismatch deletes the file and converts nothing), and converted into a weights-only
transformers folder ``<cache>/<name>/`` (``config.json`` + safetensors), which later loads memory-mapped in seconds.
``--model medsam3-3d`` then simply means that folder.

What is published (``ChongCong/Medical-SAM3``, not gated, MIT per its model card, built on SAM3's weights):

- ``checkpoint_2D.pt``: the 2D model, a ~10 GB trainer checkpoint (weights + optimizer state) of the image model
  alone — no tracker, and its keys lack the ``detector.`` prefix. It converts to a detector-only model (detect mode).
- ``checkpoint_3D_checkpoint8.pt``: the 3D model (detector + tracker), stage 1 of training at **504 px** on
  **4-slice clips**, checkpoint 8. Converted at 504 px, and it names ``clips`` (4 slices) as its recommended mode,
  which is how its authors run it.
- ``checkpoint_3D_LoRA2D.pt``: an 18 MB LoRA adapter trained on top of the 3D model; ``medsam3-3d-lora2d`` is the 3D
  model with it merged in.

Meta's ``facebook/sam3`` is gated (SAM License, accept it on the Hub first) and already a transformers folder.

The cache is ``--cache-dir``, else ``$MEDSAM3_HOME``, else ``~/.cache/medsam3``. Without network access (or without
permission for a gated repository) the command prints one line saying what to fetch by hand and where to put it;
``medsam3 convert`` does the rest.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Union

import torch

from medsam3_core.errors import MedSam3Error, ModelError
from medsam3_core.model import checkpoints
from medsam3_core.model.convert import convert_checkpoint
from medsam3_core.model.tokenizer import load_tokenizer

__all__ = [
    "Release",
    "RELEASES",
    "cache_root",
    "release_dir",
    "HubFile",
    "MEDSAM3_REPO",
    "not_downloaded_message",
    "verify",
    "release_conventions",
    "download_release",
    "add_arguments",
    "run",
]

#: Environment variable that moves the model cache (e.g. to a shared or larger disk).
HOME_ENV = "MEDSAM3_HOME"


@dataclass(frozen=True)
class HubFile:
    """One published file and what it must be once downloaded.

    Attributes:
        filename: path inside the Hub repository.
        size: exact size in bytes when published (checked first: a truncated file fails fast), else ``None``.
        sha256: SHA-256 as published (the Hub shows it for every large file), else ``None``.
    """

    filename: str
    size: Optional[int] = None
    sha256: Optional[str] = None


@dataclass(frozen=True)
class Release:
    """One downloadable model and how its authors run it.

    Attributes:
        name: the short name used with ``--model`` and ``medsam3 download``.
        repo_id: Hugging Face Hub repository.
        checkpoint: the checkpoint inside the repository; ``None`` for a repository that already is a transformers
            folder (downloaded whole, no conversion).
        description, licence: shown by ``medsam3 download --list``; the licence as the model card states it.
        gated: the repository asks for the licence to be accepted (and a login) before it serves files.
        adapter: a LoRA adapter merged into the checkpoint at conversion (the release *is* base + adapter).
        image_size: the square input size the weights were trained at; conversion builds the model for it.
        recommended_mode: the 3D mode matching how the weights were trained (``clips`` for the 3D release, which
            was trained on short clips; ``track`` otherwise), written into the converted model.
        clip_length: slices per clip for ``clips`` mode, as in training.
    """

    name: str
    repo_id: str
    checkpoint: Optional[HubFile]
    description: str
    licence: str
    gated: bool = False
    adapter: Optional[HubFile] = None
    image_size: Optional[int] = None
    recommended_mode: str = "track"
    clip_length: Optional[int] = None

    @property
    def filename(self) -> Optional[str]:
        return self.checkpoint.filename if self.checkpoint else None

    def files(self) -> list[HubFile]:
        """Every file to fetch: the checkpoint, then the adapter."""
        return [f for f in (self.checkpoint, self.adapter) if f is not None]


#: Files of a transformers model folder worth fetching (weights, config, tokenizer; not the processor extras).
_HF_FOLDER_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer*", "vocab.json",
                    "merges.txt", "special_tokens_map.json"]

#: Medical SAM3's Hub repository (not gated; its model card states the MIT licence).
MEDSAM3_REPO = "ChongCong/Medical-SAM3"
_MEDSAM3_LICENCE = "MIT (model card); built on SAM3 weights (SAM License)"
#: The 3D release: a trainer checkpoint (model + optimizer state) of the stage-1 run at 504 px on 4-slice clips.
_MEDSAM3_3D = HubFile(
    "checkpoint_3D_checkpoint8.pt", 10_302_254_109, "31fd6a05995800dd1de888d71249d8357d0804a471266343f43d104eda49440e"
)

RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release(
            "sam3",
            "facebook/sam3",
            None,
            "Meta SAM3 (detector + tracker), transformers format; gated: accept the licence on the Hub first",
            "SAM License (Meta)",
            gated=True,
            image_size=1008,
        ),
        Release(
            "medsam3-2d",
            MEDSAM3_REPO,
            HubFile("checkpoint_2D.pt", None, "f7fb9f207d587e95bcb23fb9324979db583045b71488278940c0d170bf1516fd"),
            "Medical SAM3 fine-tuned on 2D medical images (image model only, no tracker; trainer checkpoint, ~10 GB)",
            _MEDSAM3_LICENCE,
            image_size=1008,
            recommended_mode="detect",
        ),
        Release(
            "medsam3-3d",
            MEDSAM3_REPO,
            _MEDSAM3_3D,
            "Medical SAM3 3D: detector + tracker trained at 504 px on 4-slice clips (trainer checkpoint, ~10 GB)",
            _MEDSAM3_LICENCE,
            image_size=504,
            recommended_mode="clips",
            clip_length=4,
        ),
        Release(
            "medsam3-3d-lora2d",
            MEDSAM3_REPO,
            _MEDSAM3_3D,
            "Medical SAM3 3D with its 2D LoRA adapter merged in (downloads the 3D checkpoint + an 18 MB adapter)",
            _MEDSAM3_LICENCE,
            adapter=HubFile(
                "checkpoint_3D_LoRA2D.pt",
                18_553_261,
                "8fafe9b5e148786f9ff5344b798cc4471983567b5506c24bdeb93fa26d042092",
            ),
            image_size=504,
            recommended_mode="clips",
            clip_length=4,
        ),
    )
}


def cache_root(cache_dir: Union[str, Path, None] = None) -> Path:
    """Where models live: ``cache_dir``, else ``$MEDSAM3_HOME``, else ``~/.cache/medsam3``."""
    chosen = cache_dir or os.environ.get(HOME_ENV) or Path.home() / ".cache" / "medsam3"
    return Path(chosen).expanduser()


def release_dir(name: str, cache_dir: Union[str, Path, None] = None) -> Path:
    """The converted transformers folder of release ``name`` (it may not exist yet)."""
    return cache_root(cache_dir) / name


def _download_dir(repo_id: str, cache_dir: Union[str, Path, None]) -> Path:
    """Downloads are kept per Hub repository, so two releases sharing a file (the 3D checkpoint) fetch it once."""
    return cache_root(cache_dir) / "downloads" / repo_id.replace("/", "--")


def _convert_command(rel: Release, target: Path, checkpoint: str = "<that file>", adapter: str = "<adapter>") -> str:
    extra = f" --lora {adapter}" if rel.adapter else ""
    extra += f" --image-size {rel.image_size}" if rel.image_size else ""
    return f"medsam3 convert {checkpoint} {target}{extra}"


def not_downloaded_message(name: str, cache_dir: Union[str, Path, None] = None, offer_download: bool = True) -> str:
    """One line telling the user how to obtain release ``name`` and where to put it.

    ``offer_download=False`` (used when ``medsam3 download`` itself failed) leaves out the advice to run it.
    """
    rel = RELEASES[name]
    target = release_dir(name, cache_dir)
    first = f"run 'medsam3 download {name}', or " if offer_download else ""
    if rel.checkpoint is None:
        manual = f"download the Hugging Face repo {rel.repo_id} (config.json, model.safetensors) into {target}"
    else:
        files = " and ".join(f.filename for f in rel.files())
        manual = f"download {files} from the Hugging Face repo {rel.repo_id} and run '{_convert_command(rel, target)}'"
    return f"Model '{name}' is not in the cache: {first}{manual}."


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, expected: HubFile, name: str) -> None:
    """Check a downloaded file's size, then its SHA-256, against what the release publishes.

    A file that fails is deleted, so the next ``medsam3 download`` fetches it afresh instead of finding the same
    broken file (the Hub client would otherwise consider it complete).

    Raises:
        ModelError: wrong size or checksum.
    """
    size = path.stat().st_size
    problem = None
    if expected.size is not None and size != expected.size:
        problem = f"is {size:,} bytes, expected {expected.size:,}"
    elif expected.sha256 and _sha256(path) != expected.sha256.lower():
        problem = "does not match the published SHA-256 (SHA-256 mismatch)"
    if problem:
        path.unlink(missing_ok=True)
        raise ModelError(
            f"Downloaded {expected.filename} {problem}; it was deleted and nothing was converted. Run "
            f"'medsam3 download {name}' again (an incomplete or altered download)."
        )


def _hub_error(err: Exception, rel: Release, filename: Optional[str], cache_dir) -> ModelError:
    from huggingface_hub import errors as hub

    if isinstance(err, (hub.GatedRepoError, hub.RepositoryNotFoundError)):
        return ModelError(
            f"No access to Hugging Face repo {rel.repo_id}: accept its licence on huggingface.co and log in "
            f"('hf auth login' or HF_TOKEN), or place the files by hand. ({type(err).__name__})"
        )
    if isinstance(err, hub.RemoteEntryNotFoundError):
        return ModelError(
            f"{rel.repo_id} has no file {filename!r}; pick the right one with --file (see the repo's file list)."
        )
    how = not_downloaded_message(rel.name, cache_dir, offer_download=False)
    return ModelError(f"Cannot download from the Hugging Face Hub ({type(err).__name__}). {how}")


#: Packages whose exceptions mean the transfer failed: the Hub client's HTTP stack gives up on a dropped connection
#: (after its own retries) with its transport errors, which are not ``OSError`` s.
_NETWORK_PACKAGES = ("httpx", "httpx2", "requests", "urllib3")


def _is_download_failure(err: Exception) -> bool:
    from huggingface_hub import errors as hub

    known = (hub.GatedRepoError, hub.RepositoryNotFoundError, hub.RemoteEntryNotFoundError, OSError)
    return isinstance(err, known) or type(err).__module__.split(".")[0] in _NETWORK_PACKAGES


def _fetch_file(rel: Release, wanted: HubFile, cache_dir: Union[str, Path, None]) -> Path:
    """Download one file of the release, resuming a partial download, and verify it; return its path.

    Resuming is the Hub client's: with a fixed ``local_dir`` it keeps an interrupted transfer as an ``.incomplete``
    file there and continues from its end on the next call, so the same folder must be used every time.
    """
    import huggingface_hub

    try:
        path = Path(huggingface_hub.hf_hub_download(rel.repo_id, wanted.filename,
                                                    local_dir=_download_dir(rel.repo_id, cache_dir)))
    except Exception as err:  # offline (LocalEntryNotFoundError), DNS, refused or dropped connection, disk full …
        if not _is_download_failure(err):
            raise
        raise _hub_error(err, rel, wanted.filename, cache_dir) from err
    verify(path, wanted, rel.name)
    return path


def _fetch_folder(rel: Release, cache_dir: Union[str, Path, None]) -> Path:
    import huggingface_hub

    try:
        return Path(huggingface_hub.snapshot_download(rel.repo_id, local_dir=_download_dir(rel.repo_id, cache_dir),
                                                      allow_patterns=_HF_FOLDER_FILES))
    except Exception as err:
        if not _is_download_failure(err):
            raise
        raise _hub_error(err, rel, None, cache_dir) from err


def release_conventions(rel: Release) -> dict[str, object]:
    """What a converted release states about how to run it (``medsam3.json`` ``conventions``)."""
    stated: dict[str, object] = {"recommended_mode": rel.recommended_mode}
    if rel.clip_length:
        stated["clip_length"] = rel.clip_length
    return stated


def download_release(
    name: str,
    cache_dir: Union[str, Path, None] = None,
    filename: Optional[str] = None,
    repo_id: Optional[str] = None,
    force: bool = False,
) -> Path:
    """Make release ``name`` loadable from the cache: download (resumable), verify, convert once.

    Args:
        name: a key of :data:`RELEASES`.
        cache_dir: cache root (default ``$MEDSAM3_HOME`` or ``~/.cache/medsam3``).
        filename, repo_id: override the catalogue (for a renamed file or a mirror). An overridden file has no
            known size or checksum, so it is not verified.
        force: convert again even if the converted folder exists.

    Returns:
        The converted folder, usable as ``--model`` (or simply ``--model NAME``).

    Raises:
        ModelError: unknown name, no network, no access, or a size / checksum mismatch (the file is then deleted
            and nothing is converted). CheckpointError: the download is not a usable SAM3 checkpoint.
    """
    if name not in RELEASES:
        raise ModelError(f"Unknown model {name!r}; choose one of: {', '.join(RELEASES)}.")
    rel = RELEASES[name]
    if filename and filename != rel.filename:
        rel = replace(rel, checkpoint=HubFile(filename))
    rel = replace(rel, repo_id=repo_id or rel.repo_id)
    out = release_dir(name, cache_dir)
    if (out / "config.json").is_file() and not force:
        return out
    if rel.checkpoint is None:
        fetched = _fetch_folder(rel, cache_dir)
        model = checkpoints.load_folder(fetched, torch.float32)
        checkpoints.save_model(model, out, tokenizer=load_tokenizer(fetched), extra={"source": rel.repo_id})
        return out
    checkpoint = _fetch_file(rel, rel.checkpoint, cache_dir)
    adapter = _fetch_file(rel, rel.adapter, cache_dir) if rel.adapter else None
    convert_checkpoint(checkpoint, out, lora=adapter, image_size=rel.image_size, conventions=release_conventions(rel))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", choices=sorted(RELEASES), help="model to download (omit to list them)")
    parser.add_argument("--cache-dir", help=f"model cache (default ${HOME_ENV} or ~/.cache/medsam3)")
    parser.add_argument("--file", dest="filename", help="checkpoint file inside the Hub repo (overrides the default)")
    parser.add_argument("--repo", dest="repo_id", help="Hugging Face repo id (overrides the default)")
    parser.add_argument("--force", action="store_true", help="convert again even if the model is already cached")


def _print_list(cache_dir: Optional[str]) -> None:
    for rel in RELEASES.values():
        state = "cached" if (release_dir(rel.name, cache_dir) / "config.json").is_file() else "not downloaded"
        gated = ", gated" if rel.gated else ""
        print(f"{rel.name:18s} {state:15s} {rel.repo_id}  {rel.description} [{rel.licence}{gated}]")
    print(f"cache: {cache_root(cache_dir)}")


def run(args: argparse.Namespace) -> int:
    if args.name is None:
        _print_list(args.cache_dir)
        return 0
    try:
        out = download_release(
            args.name, args.cache_dir, filename=args.filename, repo_id=args.repo_id, force=args.force
        )
    except KeyboardInterrupt:
        print("cancelled; run the same command again to resume the download", file=sys.stderr)
        return 3
    except MedSam3Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.name} is ready: {out} (use --model {args.name})")
    return 0
