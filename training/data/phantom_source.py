"""Synthetic and package-shipped cases for the CPU demo model (no dataset can be downloaded here).

* ``phantom`` — abdominal CT phantoms from :func:`medsam3_core.phantom.make_abdomen_phantom` with randomised organ
  shapes, positions and intensities (one seed per case), labelled liver / spleen / kidney.
* ``mni_brain`` — nilearn's MNI152 T1 template (shipped inside the nilearn wheel) with its brain mask → "brain".
  There is only one real head, so each case is that head under a different smooth intensity bias field, contrast
  and noise level (plus the usual training augmentation); held-out cases differ in those draws, not in anatomy,
  which DEMO_MODEL.md states next to the brain Dice.

Case ids encode the seed, so the 85/15 split by case keeps every slice of a case on one side.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from medsam3_core.io.geometry import Volume

from training.data.samples import Case

__all__ = ["phantom_cases", "mni_brain_cases", "PHANTOM_SHAPE"]

#: (slices, rows, columns) of one synthetic CT case: generated in ~0.03 s, and 112² is the demo model's input
#: size; the 35 cm field of view matches the bundled demo scan (160 × 2.2 mm).
PHANTOM_SHAPE = (24, 112, 112)
_PHANTOM_SPACING = (3.14, 3.14, 10.0)


def phantom_cases(name: str, count: int, seed: int = 1000) -> list[Case]:
    """``count`` randomised abdominal phantoms (seeds ``seed … seed+count−1``)."""
    from medsam3_core.phantom import make_abdomen_phantom

    def loader(s: int):
        def load() -> tuple[Volume, np.ndarray]:
            ct, labels, _ = make_abdomen_phantom(s, shape=PHANTOM_SHAPE, spacing=_PHANTOM_SPACING, randomize=True)
            return ct, labels.array

        return load

    _, _, names = make_abdomen_phantom(seed, shape=PHANTOM_SHAPE, spacing=_PHANTOM_SPACING, randomize=True)
    concepts = {int(k): str(v) for k, v in names.items()}
    return [Case(name, f"phantom-{seed + i}", concepts, loader(seed + i)) for i in range(count)]


@lru_cache(maxsize=1)
def _mni() -> tuple[Volume, np.ndarray]:
    """MNI152 T1 (2 mm) and its brain mask as a :class:`Volume` in LPS and a ``[k, j, i]`` label array."""
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    t1 = load_mni152_template(resolution=2)
    mask = load_mni152_brain_mask(resolution=2)
    array = np.ascontiguousarray(np.asarray(t1.get_fdata(), dtype=np.float32).transpose(2, 1, 0))
    volume = Volume.from_ijk_to_ras(array, np.asarray(t1.affine, dtype=float), modality="MR")  # NIfTI affine: RAS
    labels = (np.asarray(mask.get_fdata()) > 0.5).astype(np.int32).transpose(2, 1, 0)
    return volume, np.ascontiguousarray(labels)


def _vary_brain(seed: int) -> tuple[Volume, np.ndarray]:
    base, labels = _mni()
    rng = np.random.default_rng(seed)
    k, j, i = base.array.shape
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in (k, j, i)], indexing="ij")
    bias = np.exp(sum(rng.uniform(-0.25, 0.25) * g for g in grid) + rng.uniform(-0.15, 0.15) * grid[1] * grid[2])
    array = base.array * bias.astype(np.float32) * rng.uniform(0.7, 1.4)
    array = array + rng.normal(0.0, rng.uniform(0.005, 0.04), size=array.shape).astype(np.float32)
    return Volume(array, base.spacing, base.origin, base.direction, "MR"), labels


def mni_brain_cases(name: str, count: int, seed: int = 5000) -> list[Case]:
    """``count`` intensity variants of the MNI152 head, concept 1 → "brain"."""

    def loader(s: int):
        return lambda: _vary_brain(s)

    return [Case(name, f"mni152-{seed + i}", {1: "brain"}, loader(seed + i)) for i in range(count)]
