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

from training.data.problems import DataProblems
from training.data.samples import Case

__all__ = ["nnunet_cases", "folder2d_cases", "jsonl_cases", "split_cases", "read_label_to_text"]

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".nii.gz", ".nii", ".nrrd", ".mha")


def _label_array(path: Path) -> np.ndarray:
    vol = read_volume(path)
    arr = vol.array[..., 0] if vol.is_rgb else vol.array
    return np.rint(arr).astype(np.int32)


def _loader(image: Path, mask: Path, modality: Optional[str], binary: bool = False):
    def load() -> tuple[Volume, np.ndarray]:
        for path in (mask, image):
            if not path.is_file():
                raise InputError(f"{path} is missing")
        try:
            labels = _label_array(mask)
        except InputError as err:
            raise InputError(f"label map {mask.name}: {err}") from None
        try:
            volume = read_volume(image, modality=modality or None)
        except InputError as err:
            raise InputError(f"image {image.name}: {err}") from None
        return volume, (labels > 0).astype(np.int32) if binary else labels

    return load


def read_label_to_text(path: Path) -> dict[int, str]:
    """``{"1": "liver", …}`` from a JSON file, with a clear error for anything else."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        out = {int(k): v.strip() for k, v in data.items() if isinstance(v, str)}
        if len(out) != len(data):
            raise ValueError("every value must be text")
    except (OSError, ValueError, AttributeError) as err:
        raise InputError(f"{path}: expected a JSON object such as {{\"1\": \"liver\"}} ({err})") from None
    if not out or any(not v for v in out.values()) or 0 in out:
        raise InputError(f"{path}: give a non-empty text for every label value ≥ 1 (0 is background)")
    return out


def _dataset_json(path: Path) -> dict:
    """``dataset.json`` checked for what training reads: an object whose ``labels`` map names to integer values."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read it ({err})") from None
    except ValueError as err:
        raise InputError(f"{path}: not valid JSON ({err}); fix the file or regenerate it with nnU-Net") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: must be a JSON object with labels, channel_names and file_ending")
    labels = meta.get("labels")
    if not isinstance(labels, dict) or not labels:
        kind = type(labels).__name__ if labels is not None else "missing"
        raise InputError(f"{path}: labels must map each name to its value, e.g. "
                         f"{{\"background\": 0, \"liver\": 1}} (got {kind})")
    if any(isinstance(v, list) for v in labels.values()):
        raise InputError(f"{path}: region-based labels (lists) are not supported; map each label to one value")
    if any(not isinstance(v, int) or isinstance(v, bool) or v < 0 for v in labels.values()):
        raise InputError(f"{path}: every label value must be a whole number ≥ 0, got {labels}")
    if len(set(labels.values())) != len(labels):
        raise InputError(f"{path}: two labels share one value: {labels}")
    ending = meta.get("file_ending", ".nii.gz")
    if not isinstance(ending, str) or not ending.startswith("."):
        raise InputError(f"{path}: file_ending must be text such as \".nii.gz\", got {ending!r}")
    channels = meta.get("channel_names", {})
    if not isinstance(channels, dict):
        raise InputError(f"{path}: channel_names must map channel numbers to names, e.g. {{\"0\": \"CT\"}}")
    return meta


def nnunet_cases(root: Path, name: str = "", modality: str = "") -> list[Case]:
    """The cases of an nnU-Net raw dataset; every missing image is reported at once (:class:`DataProblems`)."""
    root = Path(root)
    meta_path = root / "dataset.json"
    if not meta_path.is_file():
        raise InputError(f"{root} is not an nnU-Net raw dataset: dataset.json is missing")
    meta = _dataset_json(meta_path)
    ending, labels = meta.get("file_ending", ".nii.gz"), meta["labels"]
    declared = {int(v) for v in labels.values()} - {0}
    override = root / "label_to_text.json"
    if override.is_file():
        concepts = read_label_to_text(override)
        if set(concepts) != declared:
            raise InputError(f"{override}: gives texts for the label values {sorted(concepts)}, but dataset.json "
                             f"declares {sorted(declared)}; give one text for each declared value")
    else:
        concepts = {int(v): k.replace("_", " ") for k, v in labels.items() if int(v) != 0}
    channel = str(meta.get("channel_names", {}).get("0", ""))
    modality = modality or ("CT" if channel.upper() == "CT" else channel)
    cases, problems = [], []
    for label_path in sorted((root / "labelsTr").glob(f"*{ending}")):
        case_id = label_path.name[: -len(ending)]
        image = root / "imagesTr" / f"{case_id}_0000{ending}"
        if not image.is_file():
            problems.append(f"{root}: image imagesTr/{image.name} for label labelsTr/{label_path.name} is missing")
            continue
        cases.append(Case(name or root.name, case_id, concepts, _loader(image, label_path, modality)))
    labelled = {c.case_id for c in cases} | {p.name[: -len(ending)] for p in (root / "labelsTr").glob(f"*{ending}")}
    for image in sorted((root / "imagesTr").glob(f"*_0000{ending}")):
        if image.name[: -len(f"_0000{ending}")] not in labelled:
            problems.append(f"{root}: label labelsTr/{image.name[: -len(f'_0000{ending}')]}{ending} for image "
                            f"imagesTr/{image.name} is missing")
    if problems:
        raise DataProblems(problems)
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
