"""Each run setting is resolved once: SegmentOptions checks and normalises, plan_run fits them to the model, the
engine follows the plan; errors name the setting in words and in ``field``; the package's one-call predictor."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medsam3_core.errors import MedSam3Error, SettingError
from medsam3_core.plan import ModelLimits, plan_run
from medsam3_core.segmenter import SegmentOptions

ROOT = Path(__file__).resolve().parents[1]


def test_the_model_threshold_is_used_unless_one_is_given():
    model = ModelLimits(score_threshold=0.15, tracker_frames=7)
    plan = plan_run(["kidney"], SegmentOptions(), model)
    assert (plan.threshold, plan.threshold_source, plan.warnings) == (0.15, "model", ())
    plan = plan_run(["kidney"], SegmentOptions(threshold=0.4), model)
    assert (plan.threshold, plan.threshold_source) == (0.4, "user")


def test_mode_and_memory_are_fitted_to_the_model_with_a_warning_in_words():
    plan = plan_run("liver", SegmentOptions(mode="track"), ModelLimits(0.5, tracker_frames=None))
    assert plan.mode == "detect" and "detect mode" in plan.warnings[0] and "--" not in plan.warnings[0]
    plan = plan_run("liver", SegmentOptions(memory_size=50), ModelLimits(0.5, tracker_frames=7))
    assert plan.memory_size == 7 and "memory size 50" in plan.warnings[0] and "--" not in plan.warnings[0]
    plan = plan_run("liver", SegmentOptions(mode="detect", memory_size=50), ModelLimits(0.5, tracker_frames=7))
    assert plan.memory_size == 50 and plan.warnings == ()  # detect mode has no memory bank to fit


def test_prompts_and_concepts_pair_up():
    plan = plan_run(["kidneys", "renal"], None, ModelLimits(0.5, 7), concepts=["kidney", "kidney"])
    assert plan.prompts == ("kidneys", "renal") and plan.concepts == ("kidney", "kidney")
    with pytest.raises(MedSam3Error, match="one concept per prompt"):
        plan_run(["a", "b"], None, ModelLimits(0.5, 7), concepts=["a"])


@pytest.mark.parametrize("given, stored", [
    (None, None), ("auto", None), (" Lung ", "lung"), ("40,400", (40.0, 400.0)), ([50, 80], (50.0, 80.0)),
])
def test_the_window_is_parsed_once_into_one_form(given, stored):
    options = SegmentOptions(window=given)
    assert options.window == stored
    assert SegmentOptions.from_dict(options.to_dict()).window == stored  # survives the wire and the report


@pytest.mark.parametrize("changes, field", [
    ({"threshold": 2.0}, "threshold"), ({"window": "nonsense"}, "window"), ({"window": "40,-1"}, "window"),
    ({"mode": "fast"}, "mode"), ({"slice_axis": "oblique"}, "slice_axis"), ({"batch_size": 0}, "batch_size"),
    ({"memory_size": 0}, "memory_size"),
])
def test_bad_settings_name_their_field_in_words_not_flags(changes, field):
    with pytest.raises(SettingError) as caught:
        SegmentOptions(**changes)
    assert caught.value.field == field and "--" not in str(caught.value) and "\n" not in str(caught.value)


def test_the_cli_renders_the_field_as_its_flag(capsys):
    from medsam3_core.cli.infer import EXIT_USER_ERROR, main

    assert main(["infer", "demo", "kidney", "--threshold", "2", "--quiet"]) == EXIT_USER_ERROR
    err = capsys.readouterr().err.strip()
    assert err == "error: The threshold must be between 0 and 1, got 2.0. (option --threshold)"


def test_importing_the_package_stays_torch_free():
    code = ("import sys, medsam3_core, medsam3_core.plan, medsam3_core.segmenter, medsam3_core.windows; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=ROOT)


def test_one_import_segments_a_path_or_a_volume(random_bundle):
    import medsam3_core
    from medsam3_core import LocalSegmenter, SegmentOptions as Exported, Volume, read_volume, segment

    assert Exported is SegmentOptions and callable(read_volume) and "segment" in dir(medsam3_core)
    rng = np.random.default_rng(3)
    volume = Volume(rng.normal(100, 30, (4, 16, 16)).astype(np.float32), modality="MR")
    segmenter = LocalSegmenter(random_bundle)
    result = segment(volume, ["Kidneys", "liver"], segmenter, mode="detect", threshold=0.2)
    assert result.labelmap.same_geometry(volume)
    assert [(s.prompt, s.concept) for s in result.segments] == [("Kidneys", "kidney"), ("liver", "liver")]
    assert result.options.mode == "detect" and result.threshold_source == "user"
    with pytest.raises(SettingError, match="Unknown option 'treshold'") as caught:
        segment(volume, "liver", segmenter, treshold=0.2)
    assert caught.value.field == "treshold"


def test_segment_reads_a_path_with_the_named_model(tmp_path):
    from medsam3_core import segment
    from medsam3_core.phantom import demo_paths

    result = segment(str(demo_paths().ct), "liver", "demo", device="cpu", mode="detect")
    assert result.labelmap.shape == result.labelmap.array.shape[:3]
    assert result.threshold_source == "model" and 0 < result.options.threshold < 1  # the demo model's own
    assert result.segments[0].voxels > 0
