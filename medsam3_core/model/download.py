"""``medsam3 download``: fetch released weights once, convert them once, load them fast forever after.

Each release in :data:`RELEASES` is downloaded from the Hugging Face Hub into ``<cache>/downloads/<name>/``
(resumable: an interrupted download continues where it stopped), checked against a SHA-256 where one is known,
and converted into a weights-only transformers folder ``<cache>/<name>/`` (``config.json`` + safetensors), which
later loads memory-mapped in seconds. ``--model medsam3-3d`` then simply means that folder.

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

from medsam3_core.model import checkpoints
from medsam3_core.model.convert import convert_checkpoint
from medsam3_core.errors import MedSam3Error, ModelError
from medsam3_core.model.tokenizer import load_tokenizer

__all__ = [
    "Release",
    "RELEASES",
    "cache_root",
    "release_dir",
    "not_downloaded_message",
    "download_release",
    "add_arguments",
    "run",
]

#: Environment variable that moves the model cache (e.g. to a shared or larger disk).
HOME_ENV = "MEDSAM3_HOME"


@dataclass(frozen=True)
class Release:
    """One downloadable model.

    Attributes:
        name: the short name used with ``--model`` and ``medsam3 download``.
        repo_id: Hugging Face Hub repository.
        filename: the checkpoint inside the repository; ``None`` for a repository that already is a transformers
            folder (downloaded whole, no conversion).
        description, licence: shown by ``medsam3 download --list``.
        sha256: expected checksum of ``filename`` when published, else ``None``.
    """

    name: str
    repo_id: str
    filename: Optional[str]
    description: str
    licence: str
    sha256: Optional[str] = None


#: Files of a transformers model folder worth fetching (weights, config, tokenizer; not the processor extras).
_HF_FOLDER_FILES = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer*", "vocab.json",
                    "merges.txt", "special_tokens_map.json"]

RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release(
            "sam3",
            "facebook/sam3",
            None,
            "Meta SAM3 (detector + tracker), transformers format; gated: accept the licence on the Hub first",
            "SAM License (Meta)",
        ),
        Release(
            "medsam3-2d",
            "ChongCong/Medical-SAM3",
            "checkpoint.pt",
            "Medical SAM3 fine-tuned on 2D medical images (native trainer checkpoint, ~10 GB)",
            "MIT (model card); built on SAM3 weights (SAM License)",
        ),
        Release(
            "medsam3-3d",
            "ChongCong/Medical-SAM3",
            "medsam3_stage1_train_all_unified/checkpoint_1.pt",
            "Medical SAM3 fine-tuned on 2D and 3D data (native trainer checkpoint, ~10 GB)",
            "MIT (model card); built on SAM3 weights (SAM License)",
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


def _download_dir(name: str, cache_dir: Union[str, Path, None]) -> Path:
    return cache_root(cache_dir) / "downloads" / name


def not_downloaded_message(name: str, cache_dir: Union[str, Path, None] = None, offer_download: bool = True) -> str:
    """One line telling the user how to obtain release ``name`` and where to put it.

    ``offer_download=False`` (used when ``medsam3 download`` itself failed) leaves out the advice to run it.
    """
    rel = RELEASES[name]
    target = release_dir(name, cache_dir)
    first = f"run 'medsam3 download {name}', or " if offer_download else ""
    if rel.filename is None:
        manual = f"download the Hugging Face repo {rel.repo_id} (config.json, model.safetensors) into {target}"
    else:
        manual = (
            f"download {rel.filename} from the Hugging Face repo {rel.repo_id} and run "
            f"'medsam3 convert <that file> {target}'"
        )
    return f"Model '{name}' is not in the cache: {first}{manual}."


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch(rel: Release, cache_dir: Union[str, Path, None]) -> Path:
    """Download the release's file (or folder) into the cache, resuming a partial download; return its path."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub import errors as hub

    target = _download_dir(rel.name, cache_dir)

    try:
        if rel.filename is None:
            return Path(snapshot_download(rel.repo_id, local_dir=target, allow_patterns=_HF_FOLDER_FILES))
        return Path(hf_hub_download(rel.repo_id, rel.filename, local_dir=target))
    except (hub.GatedRepoError, hub.RepositoryNotFoundError) as err:
        raise ModelError(
            f"No access to Hugging Face repo {rel.repo_id}: accept its licence on huggingface.co and log in "
            f"('hf auth login' or HF_TOKEN), or place the files by hand. ({type(err).__name__})"
        ) from err
    except hub.RemoteEntryNotFoundError as err:
        raise ModelError(
            f"{rel.repo_id} has no file {rel.filename!r}; pick the right one with --file (see the repo's file list)."
        ) from err
    except OSError as err:  # offline (LocalEntryNotFoundError), DNS failure, refused connection, disk full …
        how = not_downloaded_message(rel.name, cache_dir, offer_download=False)
        raise ModelError(f"Cannot download from the Hugging Face Hub ({type(err).__name__}). {how}") from err


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
        filename, repo_id: override the catalogue (for a renamed file or a mirror).
        force: convert again even if the converted folder exists.

    Returns:
        The converted folder, usable as ``--model`` (or simply ``--model NAME``).

    Raises:
        ModelError: unknown name, no network, no access, or a checksum mismatch. CheckpointError: the download is
            not a usable SAM3 checkpoint.
    """
    if name not in RELEASES:
        raise ModelError(f"Unknown model {name!r}; choose one of: {', '.join(RELEASES)}.")
    rel = RELEASES[name]
    rel = replace(rel, filename=filename or rel.filename, repo_id=repo_id or rel.repo_id)
    out = release_dir(name, cache_dir)
    if (out / "config.json").is_file() and not force:
        return out
    fetched = _fetch(rel, cache_dir)
    if rel.sha256 and fetched.is_file() and _sha256(fetched) != rel.sha256:
        raise ModelError(f"{fetched} is corrupt (SHA-256 mismatch); delete it and run 'medsam3 download {name}'.")
    if fetched.is_dir():
        model = checkpoints.load_folder(fetched, torch.float32)
        checkpoints.save_model(model, out, tokenizer=load_tokenizer(fetched), extra={"source": rel.repo_id})
    else:
        convert_checkpoint(fetched, out)
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
        print(f"{rel.name:12s} {state:15s} {rel.repo_id}  {rel.description} [{rel.licence}]")
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
