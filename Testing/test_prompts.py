"""Prompt normalisation: folding, the synonym table and its codes, user extensions, and the CLI's report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.sr._concepts_dict import concepts as DICOM_CONCEPTS

from medsam3_core.errors import InputError, PromptError
from medsam3_core.prompts import (
    LOCAL_SCHEME,
    SYNONYMS_ENV,
    coded_concept,
    duplicate_concepts,
    fold,
    load_synonyms,
    resolve_prompts,
    singular,
)


def _one(prompt: str, **kwargs):
    return resolve_prompts([prompt], **kwargs)[0]


@pytest.mark.parametrize(
    "raw, concept, source",
    [
        ("liver", "liver", "raw"),
        ("Liver", "liver", "folded"),
        ("  the LIVER. ", "liver", "folded"),
        ("kidneys", "kidney", "folded"),
        ("Kidneys", "kidney", "folded"),
        ("renal", "kidney", "synonym"),
        ("Hepatic", "liver", "synonym"),
        ("vertebrae", "vertebra", "folded"),
        ("ribs", "rib", "folded"),
        ("Gall-Bladder", "gallbladder", "synonym"),
        ("oesophagus", "esophagus", "synonym"),
        ("nuclei", "nucleus", "synonym"),
        ("Renal  Tumours", "kidney tumor", "synonym"),
        ("pancreas", "pancreas", "raw"),
        ("small_bowel", "small intestine", "synonym"),
    ],
)
def test_known_terms_resolve_to_canonical_concepts(raw, concept, source):
    r = _one(raw)
    assert (r.raw, r.concept, r.source, r.known) == (raw, concept, source, True)


@pytest.mark.parametrize("raw, concept", [("ascites", "ascites"), ("Left  kidney ", "Left kidney"),
                                          ("brain tumor", "brain tumor")])
def test_unmapped_prompts_are_used_as_typed(raw, concept):
    r = _one(raw)
    assert (r.concept, r.source, r.known) == (concept, "raw", False)


def test_folding_rules():
    assert fold("  The   Optic-Disc; ") == "optic disc"
    assert fold("ÅORTA") == "åorta"
    assert [singular(w) for w in ("kidneys", "arteries", "vertebrae", "masses", "pancreas", "nucleus", "rib")] == [
        "kidney", "artery", "vertebra", "mass", "pancreas", "nucleus", "rib"]


def test_empty_prompt_is_a_prompt_error():
    with pytest.raises(PromptError, match="empty"):
        resolve_prompts(["liver", "   "])


def test_every_alias_points_to_exactly_one_concept_and_concepts_are_not_aliases():
    table = load_synonyms()
    owners: dict[str, str] = {}
    for entry in table.concepts.values():
        for alias in entry.synonyms:
            assert alias not in table.concepts, f"{alias!r} is both a concept and a synonym of {entry.name!r}"
            assert owners.setdefault(alias, entry.name) == entry.name, f"{alias!r} is claimed twice"
            assert table.resolve(alias).concept == entry.name


def test_standard_codes_match_pydicoms_snomed_dictionary():
    """Every SNOMED CT code in the table exists in pydicom's DICOM code dictionary with that meaning."""
    table = load_synonyms()
    sct: dict[str, set[str]] = {}
    for entry in DICOM_CONCEPTS["SCT"].values():
        for value, (meaning, _) in entry.items():
            sct.setdefault(value, set()).add(meaning.casefold())
    codes = [e.code for e in table.concepts.values() if e.code] + list(table.categories.values())
    assert len(codes) > 50
    for code in codes:
        assert code.scheme == "SCT"
        assert code.meaning.casefold() in sct.get(code.value, ()), f"{code} is not in pydicom's SNOMED CT table"


def test_coded_concept_standard_and_local():
    category, kind = coded_concept("kidney")
    assert (category.value, kind.value, kind.meaning) == ("91723000", "64033007", "Kidney")
    category, kind = coded_concept("tumor")
    assert category.meaning == "Morphologically Abnormal Structure" and kind.value == "108369006"
    category, kind = coded_concept("Brain   tumor")
    assert category.meaning == "Tissue" and kind.scheme == LOCAL_SCHEME and kind.meaning == "Brain tumor"
    assert coded_concept("brain tumor")[1].value == kind.value, "local codes are stable under folding"
    assert len(kind.value) <= 16


def test_user_file_extends_and_overrides(tmp_path, monkeypatch):
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({
        "concepts": {
            "liver": {"synonyms": ["foie"]},
            "hepatocellular carcinoma": {"category": "abnormality", "synonyms": ["HCC", "hepatoma"],
                                         "code": ["25370001", "SCT", "Hepatocellular carcinoma"]},
            "blood vessel": {"synonyms": ["vessels of the eye"]},
            "hepatic tumor zone": {"synonyms": ["hepatic"]},
        }
    }))
    resolved = resolve_prompts(["Foie", "hcc", "hepatic", "liver", "ascites"], user)
    assert [(r.concept, r.source) for r in resolved] == [
        ("liver", "synonym"), ("hepatocellular carcinoma", "synonym"), ("hepatic tumor zone", "synonym"),
        ("liver", "raw"), ("ascites", "raw")]
    table = load_synonyms(user)
    assert table.entry("liver").code.value == "10200004", "extending synonyms keeps the built-in code"
    assert "hepatic" not in table.entry("liver").synonyms, "a user alias moves to the user's concept"
    assert coded_concept("hepatocellular carcinoma", table)[1].value == "25370001"

    monkeypatch.setenv(SYNONYMS_ENV, str(user))
    assert _one("hepatoma").concept == "hepatocellular carcinoma"


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ('["a"]', "expected a JSON object"),
        ('{"concepts": {"x": {"synonyms": "y"}}}', "list of non-empty strings"),
        ('{"concepts": {"x": {"code": ["1", "SCT"]}}}', "a code must be"),
        ('{"concepts": {"x": {"category": "organ"}}}', "unknown category 'organ'"),
    ],
)
def test_bad_user_files_give_one_clear_line(tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        resolve_prompts(["liver"], path)


def test_missing_user_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        resolve_prompts(["liver"], tmp_path / "nope.json")


def test_duplicate_concepts_are_listed():
    resolved = resolve_prompts(["kidney", "Renal", "liver"])
    assert duplicate_concepts(resolved) == {"kidney": ["kidney", "Renal"]}


def test_cli_report_lists_resolutions_and_the_model_sees_concepts(tmp_path):
    """The CLI resolves prompts (user file included) and reports raw → concept for every prompt."""
    from medsam3_core.io.geometry import Volume
    from medsam3_core.io.reading import write_volume
    from medsam3_core.cli.infer import main

    scan = tmp_path / "scan.nii.gz"
    write_volume(Volume(np.random.default_rng(0).normal(0, 50, (3, 40, 48)).astype(np.int16), (1.0, 1.2, 3.0),
                        modality="CT"), scan)
    user = tmp_path / "syn.json"
    user.write_text(json.dumps({"concepts": {"kidney": {"synonyms": ["nier"]}}}))
    out = tmp_path / "out"
    code = main(["infer", str(scan), "Kidneys", "Nier", "hepatic", "weird thing", "-o", str(out), "--device", "cpu",
                 "--mode", "detect", "--progress", "none", "--quiet", "--synonyms", str(user)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["prompts"] == [
        {"raw": "Kidneys", "concept": "kidney", "source": "folded", "known": True},
        {"raw": "Nier", "concept": "kidney", "source": "synonym", "known": True},
        {"raw": "hepatic", "concept": "liver", "source": "synonym", "known": True},
        {"raw": "weird thing", "concept": "weird thing", "source": "raw", "known": False},
    ]
    assert [(s["prompt"], s["concept"], s["label"]) for s in report["segments"]] == [
        ("Kidneys", "kidney", 1), ("Nier", "kidney", 2), ("hepatic", "liver", 3), ("weird thing", "weird thing", 4)]
