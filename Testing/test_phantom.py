"""The synthetic abdomen: organs on the right side of the patient, realistic HU, randomisation, speed, demo assets."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from builders import oblique_direction
from scipy import ndimage

from medsam3_core.io.reading import read_volume
from medsam3_core.phantom import (
    DEMO_SHAPE,
    LABELS,
    demo_label_names,
    demo_paths,
    main,
    make_abdomen_phantom,
    write_demo_assets,
)

LIVER, SPLEEN, KIDNEY, AORTA = 1, 2, 3, 4


def _centroid(volume, mask) -> np.ndarray:
    """Mean LPS position of the voxels in ``mask``."""
    kji = np.argwhere(mask)
    return volume.physical_points(kji[:, ::-1]).mean(axis=0)


def _z_range(volume, mask) -> tuple[float, float]:
    z = volume.physical_points(np.argwhere(mask)[:, ::-1])[:, 2]
    return float(z.min()), float(z.max())


DIRECTIONS = {
    "identity": None,
    "flipped-k": np.diag([1.0, 1.0, -1.0]),
    "oblique-flipped": oblique_direction(20) @ np.diag([1.0, -1.0, 1.0]),
}


@pytest.mark.parametrize("direction", DIRECTIONS.values(), ids=DIRECTIONS.keys())
@pytest.mark.parametrize("randomize", [False, True])
def test_anatomy_is_where_it_belongs(direction, randomize):
    ct, labels, names = make_abdomen_phantom(3, shape=(32, 96, 96), spacing=(3.5, 3.5, 8.0),
                                             direction=direction, randomize=randomize)
    assert names == LABELS
    assert ct.array.dtype == np.int16 and labels.array.dtype == np.uint8 and ct.modality == "CT"
    assert labels.same_geometry(ct) and ct.shape == (32, 96, 96)
    lab = labels.array
    liver, spleen = _centroid(ct, lab == LIVER), _centroid(ct, lab == SPLEEN)
    assert liver[0] < 0 < spleen[0], "LPS x grows to the patient's left: liver right, spleen left"
    bone = ct.array > 500
    spine = _centroid(ct, bone)
    assert abs(spine[0]) < 10 and spine[1] > liver[1], "spine on the midline, posterior"

    components, n = ndimage.label(lab == KIDNEY)
    assert n == 2, "two kidneys, one label"
    kidneys = [_centroid(ct, components == c) for c in (1, 2)]
    assert sorted(np.sign([k[0] for k in kidneys])) == [-1, 1], "one kidney on each side"
    assert all(k[1] > spine[1] - 40 and k[1] > liver[1] for k in kidneys), "kidneys are posterior"
    liver_lo, liver_hi = _z_range(ct, lab == LIVER)
    kidney_lo, kidney_hi = _z_range(ct, lab == KIDNEY)
    assert kidney_hi < liver_hi and kidney_lo < liver_lo, "kidneys lie lower than the liver dome"
    z_lo, z_hi = _z_range(ct, np.ones_like(lab, dtype=bool))
    assert liver_lo > z_lo + 0.2 * (z_hi - z_lo), "the liver only covers the upper slices"

    aorta = _centroid(ct, lab == AORTA)
    assert 0 < aorta[0] < 20 and aorta[1] < spine[1], "aorta slightly left of midline, in front of the spine"
    assert (lab == AORTA).any(axis=(1, 2)).all(), "the aorta runs through every slice"


def test_hounsfield_units_are_realistic():
    ct, labels, _ = make_abdomen_phantom(0, randomize=False)
    hu, lab = ct.array, labels.array
    median = {name: float(np.median(hu[lab == label])) for label, name in LABELS.items()}
    assert 50 <= median["liver"] <= 70
    assert 40 <= median["spleen"] <= 60 and median["spleen"] < median["liver"]
    assert 110 <= median["kidney"] <= 160
    assert 160 <= median["aorta"] <= 200
    assert np.median(hu[0, :4, :4]) < -950, "air outside the body"
    assert hu.max() > 600, "cortical bone"
    fat = (hu > -150) & (hu < -50)
    assert fat.mean() > 0.05, "subcutaneous and intra-abdominal fat"
    # spleen texture is coarser than the liver's
    assert hu[lab == SPLEEN].std() > hu[lab == LIVER].std()


def test_randomisation_and_determinism():
    a = make_abdomen_phantom(1)
    b = make_abdomen_phantom(1)
    c = make_abdomen_phantom(2)
    np.testing.assert_array_equal(a[0].array, b[0].array)
    np.testing.assert_array_equal(a[1].array, b[1].array)
    assert (a[1].array != c[1].array).mean() > 0.01, "another seed gives another anatomy"
    canon1, canon2 = make_abdomen_phantom(1, randomize=False), make_abdomen_phantom(2, randomize=False)
    np.testing.assert_array_equal(canon1[1].array, canon2[1].array)
    assert not np.array_equal(canon1[0].array, canon2[0].array), "only the noise differs"


def test_anatomy_is_drawn_in_patient_space():
    """Flipping the k axis must flip the array, not move the organs."""
    kwargs = dict(shape=(16, 64, 64), spacing=(5.0, 5.0, 10.0), randomize=False)
    _, plain, _ = make_abdomen_phantom(0, **kwargs)
    _, flipped, _ = make_abdomen_phantom(0, direction=np.diag([1.0, 1.0, -1.0]), **kwargs)
    assert (plain.array[::-1] == flipped.array).mean() > 0.999


def test_single_slice_is_mid_abdomen():
    ct, labels, _ = make_abdomen_phantom(0, shape=(1, 96, 96), spacing=(3.5, 3.5, 5.0), randomize=False)
    assert ct.shape == (1, 96, 96)
    assert {LIVER, AORTA} <= set(np.unique(labels.array))


def test_fast_enough_for_training_data():
    make_abdomen_phantom(0)
    start = time.perf_counter()
    for seed in range(5):
        make_abdomen_phantom(seed)
    per_case = (time.perf_counter() - start) / 5
    print(f"phantom 32x128x128: {per_case * 1000:.1f} ms")
    assert per_case < 0.25  # ~25 ms measured alone; generous for a busy 2-core CI machine


def test_bundled_demo_assets_are_current(tmp_path):
    paths = demo_paths()
    assert paths[0] == paths.ct and all(p.exists() for p in paths)
    assert paths.ct.stat().st_size + paths.labels.stat().st_size < 2 * 1024 * 1024
    ct, labels = read_volume(paths.ct), read_volume(paths.labels)
    assert ct.shape == DEMO_SHAPE and labels.same_geometry(ct)
    assert not np.allclose(ct.direction, np.eye(3)) and np.linalg.det(ct.direction) < 0
    assert len(set(np.round(ct.spacing, 3))) > 1, "anisotropic"
    assert demo_label_names() == LABELS
    assert json.loads(paths.names.read_text()) == {str(k): v for k, v in LABELS.items()}
    # regenerating gives identical voxels: the shipped files are the documented deterministic phantom
    fresh = write_demo_assets(tmp_path)
    np.testing.assert_array_equal(read_volume(fresh.ct).array, ct.array)
    np.testing.assert_array_equal(read_volume(fresh.labels).array, labels.array)
    # and in the shipped scan the liver is on the patient's right
    assert _centroid(ct, labels.array == LIVER)[0] < 0 < _centroid(ct, labels.array == SPLEEN)[0]


def test_command_line(tmp_path, capsys):
    assert main(["--write-demo", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo_ct.nii.gz", "demo_labels.json", "demo_labels.nii.gz"]
    assert "demo_ct.nii.gz" in capsys.readouterr().out
    assert main([]) == 2


def test_heldout_family_has_other_organ_shapes_and_train_family_is_unchanged():
    train_ct, train, _ = make_abdomen_phantom(seed=3, shape=(24, 96, 96), spacing=(3.0, 3.0, 10.0))
    same_ct, same, _ = make_abdomen_phantom(seed=3, shape=(24, 96, 96), spacing=(3.0, 3.0, 10.0), family="train")
    assert np.array_equal(train.array, same.array) and np.array_equal(train_ct.array, same_ct.array)
    _, held, _ = make_abdomen_phantom(seed=3, shape=(24, 96, 96), spacing=(3.0, 3.0, 10.0), family="heldout")
    for label in (1, 2, 3):  # liver, spleen, kidney reshaped; every organ still there and in one piece (two kidneys)
        assert (held.array == label).sum() > 0 and not np.array_equal(held.array == label, train.array == label)
        assert ndimage.label(held.array == label)[1] == (2 if label == 3 else 1)
    assert np.array_equal(held.array == 4, train.array == 4)  # the aorta keeps its shape
    with pytest.raises(ValueError, match="family"):
        make_abdomen_phantom(seed=3, shape=(8, 32, 32), family="nope")
