"""The model card medsam3.json: read, checked and written in one module; a malformed card is a clear error."""

import json

import pytest

from medsam3_core.errors import MedSam3Error, ModelError
from medsam3_core.model.card import (
    CARD_FILE,
    META_CONVENTIONS,
    ModelCard,
    read_card,
    update_card,
    write_card,
)


def test_a_folder_without_a_card_gets_metas_conventions(tmp_path):
    card = read_card(tmp_path)
    assert card.conventions == META_CONVENTIONS
    assert (card.conventions.keep_aspect, card.conventions.geometry_cls, card.conventions.score_threshold) == (
        False, True, 0.5)
    assert card.to_dict() == {}


def test_stated_conventions_and_other_keys_round_trip(tmp_path):
    data = {"trained_by": "training.run", "validation": {"mean": 0.7},
            "conventions": {"keep_aspect": True, "score_threshold": 0.15}}
    write_card(tmp_path, data)
    card = read_card(tmp_path / "model.safetensors")  # a checkpoint file reads its folder's card
    assert card.conventions.keep_aspect is True and card.conventions.score_threshold == 0.15
    assert card.conventions.geometry_cls is True  # not stated: Meta's
    assert json.loads((tmp_path / CARD_FILE).read_text()) == data


def test_update_keeps_other_keys_and_states_only_what_changed(tmp_path):
    write_card(tmp_path, {"provenance": "x", "conventions": {"score_threshold": 0.2}})
    update_card(tmp_path, {"tracker_trained": True}, tracker_training={"step": 3})
    assert json.loads((tmp_path / CARD_FILE).read_text()) == {
        "provenance": "x", "tracker_training": {"step": 3},
        "conventions": {"tracker_trained": True, "score_threshold": 0.2}}


def test_the_bundled_demo_card_is_valid():
    from medsam3_core.model.bundle import DEMO_MODEL_DIR

    card = read_card(DEMO_MODEL_DIR)
    assert card.conventions.keep_aspect is True and card.conventions.tracker_trained is False
    assert 0 < card.conventions.score_threshold < 1


@pytest.mark.parametrize(
    "text, field",
    [
        ('{"conventions": {"keep_aspect": "false"}}', "conventions.keep_aspect"),
        ('{"conventions": {"tracker_trained": 1}}', "conventions.tracker_trained"),
        ('{"conventions": {"score_threshold": "0.3"}}', "conventions.score_threshold"),
        ('{"conventions": {"score_threshold": 0}}', "conventions.score_threshold"),
        ('{"conventions": {"score_treshold": 0.3}}', "conventions.score_treshold"),
        ('{"conventions": [1, 2]}', "conventions"),
        ("[1, 2]", None),
        ('{"conventions": {"keep_aspect": tru', None),
    ],
)
def test_a_malformed_card_is_an_error_naming_file_and_field(tmp_path, text, field):
    (tmp_path / CARD_FILE).write_text(text)
    with pytest.raises(ModelError) as caught:
        read_card(tmp_path)
    message = str(caught.value)
    assert isinstance(caught.value, MedSam3Error) and "\n" not in message
    assert str(tmp_path / CARD_FILE) in message
    assert caught.value.field == field
    if field:
        assert field in message


def test_loading_a_model_with_a_malformed_card_fails_before_the_weights(tmp_path):
    """Ignoring the card would run the demo at 0.5, with its untrained tracker and stretched inputs."""
    from medsam3_core.model.bundle import load_model

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / CARD_FILE).write_text('{"conventions": {"tracker_trained": "no"}}')
    with pytest.raises(ModelError, match="conventions.tracker_trained must be true or false"):
        load_model(str(tmp_path), device="cpu")


def test_writing_checks_the_card(tmp_path):
    with pytest.raises(ModelError, match="conventions.geometry_cls"):
        write_card(tmp_path, {"conventions": {"geometry_cls": "yes"}})
    assert not (tmp_path / CARD_FILE).exists()
    with pytest.raises(ModelError):
        ModelCard().with_conventions(score_threshold=1.5)
