"""Prompt normalisation: map what a user types to the canonical concept the model was trained on.

Medical SAM3 was fine-tuned with one canonical concept name per class ("kidney", "liver", …), so a user who types
"Kidneys", "renal" or "the hepatic" should get the same concept. The paper lists synonym robustness as a limitation;
this module handles the cheap, predictable part of it before the text reaches the tokenizer:

1. *Folding*: Unicode/case folding, surrounding punctuation and quotes removed, ``_``/``-`` read as spaces, runs of
   whitespace collapsed, a leading article dropped, and English plurals reduced (``kidneys``, ``arteries``,
   ``vertebrae``). Plural reduction is only *used* when it lands on a known concept, because a generic stemmer
   mangles medical words (``pancreas``, ``ascites``).
2. *Synonyms*: a table (``assets/synonyms.json``) maps common clinical terms to canonical concepts and carries the
   SNOMED CT code written into DICOM SEG. Users extend it with a file of the same shape (``--synonyms FILE`` or the
   ``MEDSAM3_SYNONYMS`` environment variable, several files separated by ``os.pathsep``); their entries win.
3. Anything else is sent to the model as typed (whitespace trimmed): the raw prompt is used when no mapping exists.
4. *Vocabulary*: a model may ship the list of concepts it was trained on (``vocabulary.txt`` in its folder). Then
   each concept is mapped onto that list through the same folding and synonyms (the model reads the word it was
   trained with, e.g. "kidneys" when that was its training word and the user typed "renal"), and a prompt that maps
   to no listed concept gets a warning naming the nearest listed ones (:func:`fit_to_vocabulary`). A text-prompted
   model answers poorly to words it never saw in training; the authors of Medical SAM3 scored only prompts that
   mapped to a training word for that reason.

Every decision is reported (:class:`PromptResolution`), so the JSON report shows what the model was actually asked.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Sequence, Union

from medsam3_core.errors import InputError, PromptError

__all__ = [
    "Code",
    "ConceptEntry",
    "PromptResolution",
    "SynonymTable",
    "SYNONYMS_ENV",
    "fold",
    "singular",
    "load_synonyms",
    "resolve_prompts",
    "coded_concept",
    "duplicate_concepts",
    "fit_to_vocabulary",
]

SYNONYMS_ENV = "MEDSAM3_SYNONYMS"
_BUNDLED = Path(__file__).with_name("assets") / "synonyms.json"
_ARTICLES = ("the ", "a ", "an ")
#: Local coding scheme for concepts without a standard code (DICOM reserves designators starting with "99").
LOCAL_SCHEME = "99MEDSAM3"
#: Category used when a concept is not in the table (3D Slicer's default for a new segment, too).
DEFAULT_CATEGORY = "tissue"

Source = Literal["synonym", "folded", "raw"]


@dataclass(frozen=True)
class Code:
    """A coded concept (DICOM code value, coding scheme designator, code meaning)."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class ConceptEntry:
    """One canonical concept of the table: its name, category key (``None``: the default), code and synonyms."""

    name: str
    category: Optional[str] = None
    code: Optional[Code] = None
    synonyms: tuple[str, ...] = ()


@dataclass(frozen=True)
class PromptResolution:
    """How one user prompt became the concept sent to the model.

    ``source`` is ``"synonym"`` when a table synonym renamed it, ``"folded"`` when only case/spacing/plural folding
    was needed to reach a known concept, and ``"raw"`` when the text is used as typed (it already was the canonical
    name, or no mapping exists).
    """

    raw: str
    concept: str
    source: Source
    known: bool = field(default=False)

    def to_dict(self) -> dict[str, Any]:
        return {"raw": self.raw, "concept": self.concept, "source": self.source, "known": self.known}


def fold(text: str) -> str:
    """Case/Unicode/punctuation/whitespace folding used for table look-ups (not plural reduction)."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[_\-/]+", " ", text)
    text = re.sub(r"\s+", " ", text).strip(" \t\"'`.,;:!?()[]{}")
    for article in _ARTICLES:
        if text.startswith(article) and len(text) > len(article):
            text = text[len(article) :]
            break
    return text.strip()


def singular(word: str) -> str:
    """English singular of one word by suffix rules (``kidneys`` → ``kidney``, ``arteries`` → ``artery``).

    Deliberately naive; callers only trust the result when it matches a known concept.
    """
    if len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("ae"):
        return word[:-1]
    if word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is", "as")):
        return word[:-1]
    return word


def _plural_candidates(folded: str) -> list[str]:
    """Folded text with the head noun (last word) singular, then with every word singular."""
    words = folded.split(" ")
    last = " ".join(words[:-1] + [singular(words[-1])])
    every = " ".join(singular(w) for w in words)
    return [c for c in dict.fromkeys([last, every]) if c != folded]


class SynonymTable:
    """Canonical concepts, their categories and codes, and an index from every folded alias to its concept."""

    def __init__(self, concepts: dict[str, ConceptEntry], categories: dict[str, Code]) -> None:
        self.concepts = dict(concepts)
        self.categories = dict(categories)
        self._index: dict[str, str] = {}
        for entry in self.concepts.values():
            self._index[fold(entry.name)] = entry.name
        for entry in self.concepts.values():
            for alias in entry.synonyms:
                self._index.setdefault(fold(alias), entry.name)

    @classmethod
    def from_data(cls, data: Any, origin: str) -> "SynonymTable":
        """Parse the JSON shape of ``assets/synonyms.json``; ``origin`` names the file in error messages."""
        if not isinstance(data, dict) or not isinstance(data.get("concepts", {}), dict):
            raise InputError(f"{origin}: expected a JSON object with a 'concepts' object (see assets/synonyms.json).")
        categories = {
            key: _parse_code(value, f"{origin}: category {key!r}") for key, value in data.get("categories", {}).items()
        }
        concepts = {}
        for name, spec in data.get("concepts", {}).items():
            where = f"{origin}: concept {name!r}"
            if not isinstance(spec, dict):
                raise InputError(f"{where} must be an object with 'synonyms' and optionally 'code' and 'category'.")
            synonyms = spec.get("synonyms", [])
            if not isinstance(synonyms, list) or not all(isinstance(s, str) and s.strip() for s in synonyms):
                raise InputError(f"{where}: 'synonyms' must be a list of non-empty strings.")
            code = _parse_code(spec["code"], where) if spec.get("code") is not None else None
            category = spec.get("category")
            if category is not None and not isinstance(category, str):
                raise InputError(f"{where}: 'category' must be a category name such as 'anatomy'.")
            concepts[fold(name)] = ConceptEntry(fold(name), category, code, tuple(fold(s) for s in synonyms))
        return cls(concepts, categories)

    def merged(self, other: "SynonymTable") -> "SynonymTable":
        """This table extended by ``other``: its synonyms are added, its codes/categories and aliases win."""
        concepts = dict(self.concepts)
        for name, entry in other.concepts.items():
            base = concepts.get(name)
            if base is not None:
                synonyms = tuple(dict.fromkeys(base.synonyms + entry.synonyms))
                entry = ConceptEntry(name, entry.category or base.category, entry.code or base.code, synonyms)
            concepts[name] = entry
        claimed = {alias: owner for owner, entry in other.concepts.items() for alias in entry.synonyms}
        for name, entry in list(concepts.items()):
            kept = tuple(s for s in entry.synonyms if claimed.get(s, name) == name)
            if kept != entry.synonyms:
                concepts[name] = ConceptEntry(name, entry.category, entry.code, kept)
        return SynonymTable(concepts, {**self.categories, **other.categories})

    def category_of(self, concept: str) -> Code:
        """Category code of a concept (the default category for unknown concepts)."""
        entry = self.entry(concept)
        return self.categories[(entry.category if entry else None) or DEFAULT_CATEGORY]

    def check(self) -> None:
        """Raise :class:`InputError` when a concept names a category the table does not define."""
        for name, entry in self.concepts.items():
            key = entry.category or DEFAULT_CATEGORY
            if key not in self.categories:
                raise InputError(
                    f"Concept {name!r} uses the unknown category {key!r}; "
                    f"known categories: {', '.join(sorted(self.categories))}."
                )

    def lookup(self, folded: str) -> Optional[str]:
        """Canonical concept for already-folded text, or ``None``."""
        return self._index.get(folded)

    def entry(self, concept: str) -> Optional[ConceptEntry]:
        return self.concepts.get(fold(concept))

    def resolve(self, prompt: str) -> PromptResolution:
        """Resolve one prompt (see the module docstring for the order of rules)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise PromptError("A prompt is empty; give one concept per prompt, e.g. \"liver\".")
        raw = prompt
        folded = fold(raw)
        for candidate in [folded, *_plural_candidates(folded)]:
            concept = self.lookup(candidate)
            if concept is None:
                continue
            if candidate != concept:
                return PromptResolution(raw, concept, "synonym", True)
            return PromptResolution(raw, concept, "raw" if raw == concept else "folded", True)
        return PromptResolution(raw, " ".join(raw.split()), "raw", False)


def _parse_code(value: Any, where: str) -> Code:
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 3
        or not all(isinstance(v, str) and v.strip() for v in value)
    ):
        raise InputError(f'{where}: a code must be ["value", "scheme", "meaning"], e.g. ["10200004", "SCT", "Liver"].')
    return Code(*(v.strip() for v in value))


def _read_table(path: Union[str, Path]) -> SynonymTable:
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"Synonym file {path} does not exist; pass a JSON file shaped like assets/synonyms.json.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"Synonym file {path} is not valid JSON ({err}).") from None
    return SynonymTable.from_data(data, str(path))


@functools.lru_cache(maxsize=1)
def _bundled_table() -> SynonymTable:
    return _read_table(_BUNDLED)


def load_synonyms(extra_synonyms_file: Union[None, str, Path] = None) -> SynonymTable:
    """The bundled table, extended by the files in ``$MEDSAM3_SYNONYMS`` and then by ``extra_synonyms_file``."""
    table = _bundled_table()
    extra: list[Union[str, Path]] = [p for p in os.environ.get(SYNONYMS_ENV, "").split(os.pathsep) if p.strip()]
    if extra_synonyms_file is not None:
        extra.append(extra_synonyms_file)
    for path in extra:
        table = table.merged(_read_table(path))
    table.check()
    return table


def resolve_prompts(
    prompts: Iterable[str],
    extra_synonyms_file: Union[None, str, Path] = None,
    *,
    table: Optional[SynonymTable] = None,
) -> list[PromptResolution]:
    """Resolve every prompt to the concept sent to the model; raises :class:`PromptError` for an empty prompt.

    Prompts that resolve to the same concept are kept (they become separate labels); the caller may warn.
    """
    table = table or load_synonyms(extra_synonyms_file)
    return [table.resolve(p) for p in prompts]


def coded_concept(concept: str, table: Optional[SynonymTable] = None) -> tuple[Code, Code]:
    """``(category, type)`` codes for a concept, as DICOM SEG needs them.

    Concepts with a standard code use it; others get a stable code in the local ``99MEDSAM3`` scheme whose meaning
    is the concept text, so a reader still sees what was segmented.
    """
    table = table or load_synonyms()
    entry = table.entry(concept)
    category = table.category_of(concept)
    if entry is not None and entry.code is not None:
        return category, entry.code
    text = " ".join(concept.split()) or "segment"
    digest = hashlib.sha1(fold(text).encode("utf-8")).hexdigest()[:8].upper()
    return category, Code(f"C{digest}", LOCAL_SCHEME, text[:64])


def duplicate_concepts(resolutions: Sequence[PromptResolution]) -> dict[str, list[str]]:
    """Concepts asked for by more than one prompt → those prompts (for a warning in the report)."""
    seen: dict[str, list[str]] = {}
    for r in resolutions:
        seen.setdefault(r.concept, []).append(r.raw)
    return {c: raws for c, raws in seen.items() if len(raws) > 1}


def _aliases(concept: str, table: SynonymTable) -> list[str]:
    """Folded spellings that name ``concept``: itself, its singular forms, its canonical concept and synonyms."""
    folded = fold(concept)
    names = [folded, *_plural_candidates(folded)]
    resolution = table.resolve(concept)
    if resolution.known:
        entry = table.entry(resolution.concept)
        names += [resolution.concept, *(entry.synonyms if entry else ())]
    return list(dict.fromkeys(names))


def fit_to_vocabulary(
    concepts: Sequence[str], vocabulary: Sequence[str], table: Optional[SynonymTable] = None
) -> tuple[list[str], list[str]]:
    """Map each concept onto the model's training vocabulary; warn about those that map to none.

    A concept is replaced by the listed word that it, its singular, its canonical concept or one of that concept's
    synonyms folds to (so spelling and synonyms never matter). A concept that reaches no listed word is sent as it
    is, and a warning names the nearest listed concepts (by string similarity).

    Returns:
        ``(concepts the model reads, warnings)``.
    """
    table = table or load_synonyms()
    index: dict[str, str] = {}
    for word in vocabulary:
        for alias in _aliases(word, table):
            index.setdefault(alias, word)
    out, warnings = [], []
    for concept in concepts:
        hit = next((index[a] for a in _aliases(concept, table) if a in index), None)
        if hit is not None:
            out.append(hit)
            continue
        out.append(concept)
        nearest = difflib.get_close_matches(fold(concept), [fold(v) for v in vocabulary], n=3, cutoff=0.6)
        names = [next(v for v in vocabulary if fold(v) == n) for n in nearest]
        hint = f"nearest known: {', '.join(names)}" if names else "see vocabulary.txt in the model folder"
        warnings.append(
            f"'{concept}' is not among the {len(vocabulary)} concepts this model was trained on ({hint}); "
            "its result may be unreliable."
        )
    return out, warnings
