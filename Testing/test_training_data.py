"""Training data: manifests (nnU-Net, 2D folders, JSONL), split by case, instances, prompt samples, sampling, config."""

import json

import numpy as np
import pytest
from builders import write_nnunet_dataset
from PIL import Image

from medsam3_core.errors import InputError
from training.config import ConfigError, TrainConfig, apply_overrides, load_config
from training.data.manifests import folder2d_cases, jsonl_cases, nnunet_cases, split_cases
from training.data.sampler import BalancedSampler
from training.data.samples import Case, PromptDataset, instances_of
from medsam3_core.io.geometry import Volume


def _nnunet(root, n=3):
    cases = []
    for c in range(n):
        img = np.random.default_rng(c).normal(40, 10, (16, 16, 6)).astype(np.float32)
        lab = np.zeros((16, 16, 6), np.uint8)
        lab[2:7, 3:9, 1:5] = 1
        lab[10:14, 10:14, 2:4] = 2
        cases.append((img, lab))
    write_nnunet_dataset(root, cases, {"liver": 1, "left_kidney": 2})


def test_nnunet_manifest_cases_concepts_and_slices(tmp_path):
    _nnunet(tmp_path / "Dataset001_Toy")
    cases = nnunet_cases(tmp_path / "Dataset001_Toy")
    assert [c.case_id for c in cases] == ["case00", "case01", "case02"]
    assert cases[0].concepts == {1: "liver", 2: "left kidney"} and cases[0].dataset == "Dataset001_Toy"
    volume, labels = cases[0].load()
    assert volume.modality == "CT" and labels.shape == volume.shape == (6, 16, 16)
    ds = PromptDataset(cases, image_size=28, vocabulary=["liver", "left kidney"], augment=False)
    assert len(ds) == 3 * 4  # four labelled axial slices per case
    (tmp_path / "Dataset001_Toy" / "label_to_text.json").write_text(json.dumps({"1": "liver", "2": "kidney"}))
    assert nnunet_cases(tmp_path / "Dataset001_Toy")[0].concepts[2] == "kidney"


def test_nnunet_manifest_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="dataset.json is missing"):
        nnunet_cases(tmp_path)
    _nnunet(tmp_path / "d")
    (tmp_path / "d" / "imagesTr" / "case01_0000.nii.gz").unlink()
    with pytest.raises(InputError, match="case01_0000.nii.gz"):
        nnunet_cases(tmp_path / "d")


def _png(path, array):
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_folder2d_and_jsonl_manifests(tmp_path):
    root = tmp_path / "polyps"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:12] = 1
    for i in range(2):
        _png(root / "images" / f"im{i}.png", np.full((20, 30), 100 + i))
        _png(root / "masks" / f"im{i}.png", mask)
    (root / "labels.json").write_text(json.dumps({"1": "polyp"}))
    cases = folder2d_cases(root)
    assert [c.case_id for c in cases] == ["im0", "im1"] and cases[0].concepts == {1: "polyp"}
    image, labels = cases[0].load()
    assert labels.shape[-2:] == (20, 30) and labels.max() == 1

    lines = [{"image": "polyps/images/im0.png", "mask": "polyps/masks/im0.png", "text": "polyp"},
             {"image": "polyps/images/im0.png", "mask": "polyps/masks/im0.png", "text": "lesion"}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    triplets = jsonl_cases(tmp_path / "t.jsonl")
    assert [c.concepts for c in triplets] == [{1: "polyp"}, {1: "lesion"}]
    assert triplets[0].case_id == triplets[1].case_id  # one image → one case for the split
    (tmp_path / "bad.jsonl").write_text('{"image": "x.png"}\n')
    with pytest.raises(InputError, match="bad.jsonl:1"):
        jsonl_cases(tmp_path / "bad.jsonl")


def test_split_by_case_is_85_15_seeded_and_keeps_cases_whole():
    cases = [Case("d", f"c{i:02d}", {1: "x"}, lambda: None) for i in range(20)]
    cases += [Case("d", "c05", {1: "y"}, lambda: None)]  # a second concept of case c05
    train, val = split_cases(cases, 0.15, 42)
    val_ids = {c.case_id for c in val}
    assert len(val_ids) == 3 and not val_ids & {c.case_id for c in train}
    assert split_cases(cases, 0.15, 42)[1] == val and split_cases(cases, 0.15, 7)[1] != val
    assert sum(c.case_id == "c05" for c in val) in (0, 2)


def test_instances_are_connected_components_without_specks():
    lab = np.zeros((20, 20), np.int32)
    lab[2:6, 2:6] = 3
    lab[10:15, 12:18] = 3
    lab[18, 18] = 3  # one-pixel speck
    inst = instances_of(lab, 3, min_pixels=4)
    assert inst.shape == (2, 20, 20) and sorted(int(m.sum()) for m in inst) == [16, 30]


def _toy_case(dataset="toy"):
    def load():
        arr = np.zeros((2, 28, 28), np.float32)
        lab = np.zeros((2, 28, 28), np.int32)
        arr[:, 4:12, 4:12] = 200.0
        lab[:, 4:12, 4:12] = 1
        arr[:, 16:24, 16:20] = 400.0
        lab[:, 16:24, 16:20] = 1
        return Volume(arr, modality="MR"), lab

    return Case(dataset, "a", {1: "blob"}, load)


def test_prompt_samples_positive_negative_and_deterministic():
    pos = PromptDataset([_toy_case()], 56, ["blob", "liver"], negative_prob=0.0, augment=False)
    s = pos[0]
    assert s.text == "blob" and s.pixel_values.shape == (3, 56, 56)
    assert s.target.masks.shape == (2, 56, 56) and s.target.boxes.shape == (2, 4)
    assert float(s.pixel_values.min()) >= -1 and float(s.pixel_values.max()) <= 1
    neg = PromptDataset([_toy_case()], 56, ["blob", "liver"], negative_prob=0.999, augment=True)
    n = neg[1]
    assert n.text == "liver" and n.target.num_instances == 0
    aug = PromptDataset([_toy_case()], 56, ["blob"], augment=True, seed=3)
    first = aug[0].pixel_values
    assert np.array_equal(first, aug[0].pixel_values)  # same (seed, epoch, index) → same sample
    aug.set_epoch(1)
    assert not np.array_equal(first, aug[0].pixel_values)


def test_balanced_sampler_weights_ranks_and_resume():
    s = BalancedSampler([1000, 10], [1.0, 1.0], samples_per_epoch=2000, seed=0)
    idx = np.array(list(s))
    assert 0.45 < np.mean(idx >= 1000) < 0.55  # the small dataset gets half of the samples
    r0 = BalancedSampler([50, 30], [1, 1], 40, seed=1, rank=0, world_size=2)
    r1 = BalancedSampler([50, 30], [1, 1], 40, seed=1, rank=1, world_size=2)
    full = r0.epoch_indices(0)
    assert list(r0) + list(r1) != [] and sorted(list(r0) + list(r1)) == sorted(full.tolist())
    r0.set_epoch(0, position=7)
    assert list(r0) == full[0::2][7:].tolist() and len(r0) == 13


def test_config_presets_validation_and_overrides(tmp_path):
    cfg = apply_overrides(load_config("demo"), ["engine.max_steps=5", "optim.betas=0.8,0.99", "run.output_dir=/x"])
    assert cfg.engine.max_steps == 5 and cfg.optim.betas == (0.8, 0.99) and cfg.output_dir == "/x"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="no such setting"):
        apply_overrides(cfg, ["engine.max_stepz=5"])
    with pytest.raises(ConfigError, match="data.sources is empty"):
        load_config("paper").validate()
    with pytest.raises(ConfigError, match="multiple of 8"):
        apply_overrides(cfg, ["model.hidden=100", "model.tracker=false"]).validate()
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"engine": {"epochs": "x"}}))
    with pytest.raises(ConfigError, match="config.engine.epochs must be a int"):
        load_config(path)
    paper = apply_overrides(load_config("paper"), [], ["nnunet:/data/Dataset001::liver-ct"])
    assert paper.data.sources[0].name == "liver-ct" and paper.model.image_size == 1008


def test_augment_presets_default_unchanged_robust_flips_label_and_image_together():
    from training.data.augment import AUGMENT_PRESETS, augment_pair

    image = np.zeros((40, 40), np.float32)
    labels = np.zeros((40, 40), np.int32)
    image[5:15, 3:12], labels[5:15, 3:12] = 1.0, 1  # an organ in the top-left corner
    a = augment_pair(image, labels, np.random.default_rng(4))
    b = augment_pair(image, labels, np.random.default_rng(4), AUGMENT_PRESETS["default"])
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])  # the default is the shipped recipe
    corners = set()
    for seed in range(40):
        img, lab = augment_pair(image, labels, np.random.default_rng(seed), AUGMENT_PRESETS["robust"])
        assert img.shape == image.shape and 0.0 <= img.min() and img.max() <= 1.0
        ys, xs = np.nonzero(lab)
        if len(ys):
            corners.add((ys.mean() > 20, xs.mean() > 20))
            # the label still marks the bright organ: flips and rotations move both alike
            assert img[lab == 1].mean() > img[lab == 0].mean() + 0.3
    assert len(corners) >= 3  # flips sent the organ to other corners of the slice


def test_varied_phantoms_span_the_spacing_ranges_and_heldout_family_is_its_own():
    from training.data.phantom_source import SPACING_RANGE, THICKNESS_RANGE, phantom_cases, varied_geometry
    from training.data.sources import HELDOUT_FAMILY_SEED, parse_source, cases_for

    grids = [varied_geometry(s) for s in range(1000, 1060)]
    inplane = [g[1][0] for g in grids]
    thick = [g[1][2] for g in grids]
    assert SPACING_RANGE[0] <= min(inplane) < 0.8 and 2.5 < max(inplane) <= SPACING_RANGE[1]
    assert THICKNESS_RANGE[0] <= min(thick) < 1.5 and 4.5 < max(thick) <= THICKNESS_RANGE[1]
    assert any(not np.allclose(g[2], np.eye(3)) for g in grids)  # rotated in-plane
    shape, spacing, _ = varied_geometry(5, spacing=(0.8, 2.5))
    assert spacing == (0.8, 0.8, 2.5) and shape[1] == shape[2]

    held = cases_for(parse_source("phantom_heldout:2"))
    assert [c.case_id for c in held] == [f"phantom-heldout-{HELDOUT_FAMILY_SEED + i}" for i in range(2)]
    volume, labels = held[0].load()
    assert volume.modality == "CT" and set(np.unique(labels)) == {0, 1, 2, 3, 4}
    fixed = phantom_cases("x", 1, 77, varied=True, spacing=(0.8, 2.5))[0].load()[0]
    assert np.allclose(fixed.spacing, (0.8, 0.8, 2.5))


def test_brain_templates_cycle_through_every_offline_head():
    from training.data.phantom_source import BRAIN_TEMPLATES, brain_template_cases

    cases = brain_template_cases("brains", 3)
    assert [c.case_id.rsplit("-", 1)[0] for c in cases] == list(BRAIN_TEMPLATES)
    spacings = set()
    for case in cases:
        volume, labels = case.load()
        assert volume.array.shape == labels.shape and 0.05 < labels.mean() < 0.6
        inside, outside = volume.array[labels > 0].mean(), volume.array[labels == 0].mean()
        assert inside > outside  # the brain is brighter than the background in every contrast
        spacings.add(round(volume.spacing[0]))
    assert spacings == {1, 2}


def test_demo_robust_preset_validates():
    cfg = load_config("demo-robust")
    cfg.validate()
    assert cfg.data.augment_preset == "robust"
    assert {s.kind for s in cfg.data.sources} == {"phantom_varied", "brain_templates"}
    cfg.data.augment_preset = "wild"
    with pytest.raises(ConfigError, match="augment_preset"):
        cfg.validate()
