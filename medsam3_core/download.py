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

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

__all__ = [
    "Release",
    "RELEASES",
    "cache_root",
    "release_dir",
    "not_downloaded_message",
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


def not_downloaded_message(name: str, cache_dir: Union[str, Path, None] = None) -> str:
    """One line telling the user how to obtain release ``name`` by hand and where to put it."""
    rel = RELEASES[name]
    target = release_dir(name, cache_dir)
    if rel.filename is None:
        return (
            f"Model '{name}' is not in the cache. Run 'medsam3 download {name}', or download the Hugging Face repo "
            f"{rel.repo_id} (config.json, model.safetensors) into {target}."
        )
    return (
        f"Model '{name}' is not in the cache. Run 'medsam3 download {name}', or download {rel.filename} from the "
        f"Hugging Face repo {rel.repo_id} and run 'medsam3 convert <that file> {target}'."
    )
