"""The model card ``medsam3.json``: what a model folder states about itself, read, checked and written in one place.

A model folder (``config.json`` + safetensors) may carry a ``medsam3.json`` beside the weights. Its
``"conventions"`` say how inference must feed the weights, which the weights alone cannot tell:

* ``keep_aspect`` — ``true``: images are letterboxed to the square input (our training stack); ``false``: stretched
  to it (Meta's SAM3 pipeline, which Medical SAM3 fine-tunes with).
* ``geometry_cls`` — append the geometry encoder's CLS token to text prompts, as Meta's SAM3 always does.
* ``tracker_trained`` — ``false`` when the tracker weights are still random: loading then drops the tracker, since
  random memory would corrupt the fused masks.
* ``score_threshold`` — the detection score threshold the model recommends (calibrated on its validation split by
  the training export); runs that name no threshold use it.
* ``recommended_mode``, ``clip_length`` — the 3D mode the weights were trained for (``track``, ``detect`` or
  ``clips``) and, for ``clips``, the slices per clip (the Medical SAM3 3D release: ``clips`` of 4); runs that name no
  mode use them.

Every other top-level key (provenance, validation scores, training records) is kept verbatim. A folder without the
file, or a file that leaves a convention out, gets Meta's conventions and a 0.5 threshold
(:data:`META_CONVENTIONS`). A file that is not valid JSON or states a convention of the wrong type is an error that
names the file and the field: silently falling back would run the model with the wrong input convention.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from medsam3_core.errors import ModelError
from medsam3_core.io.atomic import atomic_path
from medsam3_core.segmenter import MODES

__all__ = [
    "CARD_FILE",
    "DEFAULT_SCORE_THRESHOLD",
    "META_CONVENTIONS",
    "Conventions",
    "ModelCard",
    "read_card",
    "write_card",
    "update_card",
]

CARD_FILE = "medsam3.json"
#: Detection score threshold of weights that recommend none (SAM3's own post-processing default).
DEFAULT_SCORE_THRESHOLD = 0.5


@dataclass(frozen=True)
class Conventions:
    """How inference must feed a model (module docstring); the defaults are Meta's."""

    keep_aspect: bool = False
    geometry_cls: bool = True
    tracker_trained: bool = True
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    recommended_mode: str = "track"
    clip_length: int = 4


#: Conventions of weights that state none: Meta's SAM3, and Medical SAM3, fine-tuned with Meta's pipeline.
META_CONVENTIONS = Conventions()
_BOOLEANS = ("keep_aspect", "geometry_cls", "tracker_trained")


@dataclass(frozen=True)
class ModelCard:
    """A parsed ``medsam3.json``.

    Attributes:
        conventions: the effective conventions (stated ones over Meta's).
        stated: names of the conventions the file states; only those are written back.
        other: every other top-level key, verbatim.
    """

    conventions: Conventions = META_CONVENTIONS
    stated: frozenset[str] = frozenset()
    other: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any, where: str = CARD_FILE) -> "ModelCard":
        """Check and parse the JSON content of a card; ``where`` names it in errors.

        Raises:
            ModelError: not an object, ``conventions`` not an object, an unknown convention, or one of the wrong
                type or range (``field`` is the offending key, e.g. ``conventions.score_threshold``).
        """
        if not isinstance(data, dict):
            raise ModelError(f"{where} must hold a JSON object, got {type(data).__name__}.")
        stated = data.get("conventions")
        if stated is None:
            stated = {}
        if not isinstance(stated, dict):
            raise ModelError(f"{where}: conventions must be an object, got {stated!r}.", field="conventions")
        known = {f.name for f in fields(Conventions)}
        for key, value in stated.items():
            name = f"conventions.{key}"
            if key not in known:
                raise ModelError(f"{where}: unknown field {name}; known: {', '.join(sorted(known))}.", field=name)
            if key in _BOOLEANS and not isinstance(value, bool):
                raise ModelError(f"{where}: {name} must be true or false, got {value!r}.", field=name)
            if key == "score_threshold" and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0
            ):
                raise ModelError(
                    f"{where}: {name} must be a number between 0 and 1 (exclusive), got {value!r}; fix or "
                    f"remove it (without it the model runs at {DEFAULT_SCORE_THRESHOLD}).",
                    field=name,
                )
            if key == "recommended_mode" and value not in MODES:
                raise ModelError(f"{where}: {name} must be one of {', '.join(MODES)}, got {value!r}.", field=name)
            if key == "clip_length" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ModelError(f"{where}: {name} must be a positive integer, got {value!r}.", field=name)
        values = {k: (float(v) if k == "score_threshold" else v) for k, v in stated.items()}
        other = {k: v for k, v in data.items() if k != "conventions"}
        return cls(replace(META_CONVENTIONS, **values), frozenset(stated), other)

    def to_dict(self) -> dict[str, Any]:
        """JSON content: the other keys, then the stated conventions (none: no ``conventions`` key)."""
        data = dict(self.other)
        if self.stated:
            data["conventions"] = {k: getattr(self.conventions, k) for k in _ordered(self.stated)}
        return data

    def with_conventions(self, **changes: Any) -> "ModelCard":
        """A copy stating ``changes`` as well (checked like a file's)."""
        merged = {**{k: getattr(self.conventions, k) for k in self.stated}, **changes}
        return ModelCard.from_dict({**self.other, "conventions": merged})

    def with_records(self, **records: Any) -> "ModelCard":
        """A copy with top-level keys set (provenance, training records)."""
        if "conventions" in records:
            raise ValueError("set conventions with with_conventions")
        return replace(self, other={**self.other, **records})


def _ordered(names: frozenset[str]) -> list[str]:
    return [f.name for f in fields(Conventions) if f.name in names]


def _card_path(model: Union[str, Path]) -> Path:
    path = Path(model)
    return (path if path.is_dir() else path.parent) / CARD_FILE


def read_card(model: Union[str, Path]) -> ModelCard:
    """The card of a model folder, or of the folder holding a checkpoint file; an empty card when there is none.

    Raises:
        ModelError: the file is unreadable, not JSON, or malformed (:meth:`ModelCard.from_dict`).
    """
    path = _card_path(model)
    if not path.is_file():
        return ModelCard()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"Cannot read {path}: {exc}.") from None
    except ValueError as exc:
        raise ModelError(f"{path} is not valid JSON ({exc}); fix or remove it.") from None
    return ModelCard.from_dict(data, str(path))


def write_card(folder: Union[str, Path], card: Union[ModelCard, Mapping[str, Any]]) -> Path:
    """Write ``folder/medsam3.json`` atomically, keeping an existing file's permissions (a new one is readable by
    everyone, like the package's copy). A mapping is checked as a card first."""
    if not isinstance(card, ModelCard):
        card = ModelCard.from_dict(dict(card))
    path = Path(folder) / CARD_FILE
    mode = path.stat().st_mode & 0o777 if path.is_file() else 0o644
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(card.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
        tmp.chmod(mode)  # a temporary file is private
    return path


def update_card(
    folder: Union[str, Path], conventions: Optional[Mapping[str, Any]] = None, **records: Any
) -> Path:
    """State ``conventions`` and set top-level ``records`` in ``folder``'s card, keeping everything else.

    The file is re-read right before it is replaced, so keys another tool changed meanwhile are kept.
    """
    card = read_card(Path(folder))
    if conventions:
        card = card.with_conventions(**conventions)
    if records:
        card = card.with_records(**records)
    return write_card(folder, card)
