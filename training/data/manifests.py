"""Dataset manifests → cases, and the paper's 85/15 split by case.

Supported layouts (``SourceConfig.kind``):

* ``nnunet`` — an nnU-Net v2 raw folder: ``dataset.json`` (``labels`` name→value, ``channel_names``,
  ``file_ending``), ``imagesTr/<case>_0000<ending>``, ``labelsTr/<case><ending>``. Label names become concept texts
  (``_`` → space) unless ``label_to_text.json`` (``{"1": "left kidney", …}``) beside ``dataset.json`` says otherwise.
  Only channel 0 is used: SAM3 takes one grey (or RGB) image.
* ``folder2d`` — ``images/<name>.<ext>``, ``masks/<name>.<ext>`` (label values) and ``labels.json``
  (``{"1": "polyp", …}``).
* ``jsonl`` — one ``{"image": …, "mask": …, "text": …}`` triplet per line (paths relative to the file); the mask
  is binary for that text. Triplets of one image share its case id, so they stay on one side of the split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np

from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume
from medsam3_core.io.reading import read_volume

from training.data.samples import Case

__all__ = ["nnunet_cases", "folder2d_cases", "jsonl_cases", "split_cases", "read_label_to_text"]

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii.gz", ".nii", ".nrrd", ".mha")


def _label_array(path: Path) -> np.ndarray:
    vol = read_volume(path)
    arr = vol.array[..., 0] if vol.is_rgb else vol.array
    return np.rint(arr).astype(np.int32)


def _loader(image: Path, mask: Path, modality: Optional[str], binary: bool = False):
    def load() -> tuple[Volume, np.ndarray]:
        labels = _label_array(mask)
        return read_volume(image, modality=modality or None), (labels > 0).astype(np.int32) if binary else labels

    return load


def read_label_to_text(path: Path) -> dict[int, str]:
    """``{"1": "liver", …}`` from a JSON file, with a clear error for anything else."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        out = {int(k): str(v).strip() for k, v in data.items()}
    except (OSError, ValueError, AttributeError) as err:
        raise InputError(f"{path}: expected a JSON object such as {{\"1\": \"liver\"}} ({err})") from None
    if not out or any(not v for v in out.values()) or 0 in out:
        raise InputError(f"{path}: give a non-empty text for every label value ≥ 1 (0 is background)")
    return out


def nnunet_cases(root: Path, name: str = "", modality: str = "") -> list[Case]:
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise InputError(f"{root} is not an nnU-Net raw dataset: dataset.json is missing")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    ending = meta.get("file_ending", ".nii.gz")
    labels = meta.get("labels", {})
    if any(not isinstance(v, int) for v in labels.values()):
        raise InputError(f"{meta_path}: region-based labels (lists) are not supported; map each label to one value")
    override = root / "label_to_text.json"
    concepts = (
        read_label_to_text(override)
        if override.is_file()
        else {int(v): k.replace("_", " ") for k, v in labels.items() if int(v) != 0}
    )
    channel = str(meta.get("channel_names", {}).get("0", ""))
    modality = modality or ("CT" if channel.upper() == "CT" else channel)
    cases = []
    for label_path in sorted((root / "labelsTr").glob(f"*{ending}")):
        case_id = label_path.name[: -len(ending)]
        image = root / "imagesTr" / f"{case_id}_0000{ending}"
        if not image.is_file():
            raise InputError(f"{root}: image {image.name} for label {label_path.name} is missing")
        cases.append(Case(name or root.name, case_id, concepts, _loader(image, label_path, modality)))
    if not cases:
        raise InputError(f"{root}/labelsTr holds no *{ending} files")
    return cases


def _with_ext(folder: Path, stem: str) -> Optional[Path]:
    for ext in _IMAGE_EXTS:
        if (folder / f"{stem}{ext}").is_file():
            return folder / f"{stem}{ext}"
    return None


def _stem(path: Path) -> str:
    name = path.name
    for ext in _IMAGE_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def folder2d_cases(root: Path, name: str = "", modality: str = "") -> list[Case]:
    root = Path(root)
    concepts = read_label_to_text(root / "labels.json") if (root / "labels.json").is_file() else None
    if concepts is None:
        raise InputError(f"{root}/labels.json is missing; write e.g. {{\"1\": \"polyp\"}}")
    images = sorted(p for p in (root / "images").glob("*") if p.is_file() and _stem(p) != p.name)
    cases = []
    for image in images:
        mask = _with_ext(root / "masks", _stem(image))
        if mask is None:
            raise InputError(f"{root}/masks has no mask for {image.name}")
        cases.append(Case(name or root.name, _stem(image), concepts, _loader(image, mask, modality)))
    if not cases:
        raise InputError(f"{root}/images holds no images")
    return cases


def jsonl_cases(path: Path, name: str = "", modality: str = "") -> list[Case]:
    path = Path(path)
    cases = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            image, mask, text = (path.parent / row["image"]), (path.parent / row["mask"]), str(row["text"]).strip()
        except (ValueError, KeyError, TypeError):
            raise InputError(f"{path}:{n}: expected {{\"image\": …, \"mask\": …, \"text\": …}}") from None
        if not text:
            raise InputError(f"{path}:{n}: empty text")
        cases.append(Case(name or path.stem, str(row["image"]), {1: text}, _loader(image, mask, modality, binary=True)))
    if not cases:
        raise InputError(f"{path} holds no triplets")
    return cases


def split_cases(cases: list[Case], val_fraction: float = 0.15, seed: int = 42) -> tuple[list[Case], list[Case]]:
    """``(train, val)`` by case id: a shuffled ``val_fraction`` of the ids (≥ 1 when there are ≥ 2) is validation."""
    ids = sorted({c.case_id for c in cases})
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = int(round(val_fraction * len(ids)))
    n_val = min(max(n_val, 1 if len(ids) >= 2 else 0), len(ids) - 1)
    val_ids = {ids[i] for i in order[:n_val]}
    return [c for c in cases if c.case_id not in val_ids], [c for c in cases if c.case_id in val_ids]
