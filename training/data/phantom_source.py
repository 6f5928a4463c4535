"""Synthetic and package-shipped cases for the CPU demo model (no dataset can be downloaded here).

* ``phantom`` — abdominal CT phantoms from :func:`medsam3_core.phantom.make_abdomen_phantom` with randomised organ
  shapes, positions and intensities (one seed per case), labelled liver / spleen / kidney / aorta, all on one grid
  (:data:`PHANTOM_SHAPE`, 3.14 mm in-plane, 10 mm slices).
* ``phantom_varied`` — the same anatomy on a grid drawn per case (:func:`varied_geometry`): in-plane spacing
  0.6–3.0 mm, slice thickness 1–5 mm and an in-plane rotation of the voxel axes up to ±20°. The phantom's
  anatomy is scaled to its field of view, so the spacing changes resolution, texture scale and how many slices an
  organ spans (what the tracker sees between slices), not the apparent organ size (the zoom augmentation varies
  that). ``phantom_heldout`` draws the *held-out family*: organ shapes no training case has
  (``make_abdomen_phantom(family="heldout")``) from another seed range, optionally at a fixed spacing.
* ``mni_brain`` — nilearn's MNI152 T1 template (shipped inside the nilearn wheel) with its brain mask → "brain".
  There is only one real head, so each case is that head under a different smooth intensity bias field, contrast
  and noise level (plus the usual training augmentation); held-out cases differ in those draws, not in anatomy,
  which DEMO_MODEL.md states next to the brain Dice.
* ``brain_templates`` — every head nilearn ships without a download (:data:`BRAIN_TEMPLATES`): the MNI152 2009
  T1 at 2 mm and at 1 mm (the 1 mm one cut to its central 64 axial slices, to bound memory), and a T2-like
  contrast of the same head synthesised from nilearn's grey- and white-matter maps (fluid bright, white matter
  dark). nilearn's other templates (ICBM 2009c, Colin 27, …) are fetched from the internet and are not used.
  Cases cycle through the templates, each under its own bias field, contrast and noise.

Case ids encode the seed, so the 85/15 split by case keeps every slice of a case on one side.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Optional

import numpy as np

from medsam3_core.io.geometry import Volume

from training.data.samples import Case

__all__ = ["phantom_cases", "varied_geometry", "mni_brain_cases", "brain_template_cases", "BRAIN_TEMPLATES",
           "PHANTOM_SHAPE", "SPACING_RANGE", "THICKNESS_RANGE"]

#: (slices, rows, columns) of one synthetic CT case: generated in ~0.03 s, and 112² is the demo model's input
#: size; the 35 cm field of view matches the bundled demo scan (160 × 2.2 mm).
PHANTOM_SHAPE = (24, 112, 112)
_PHANTOM_SPACING = (3.14, 3.14, 10.0)
#: In-plane spacing and slice thickness (mm) of ``phantom_varied`` cases.
SPACING_RANGE = (0.6, 3.0)
THICKNESS_RANGE = (1.0, 5.0)
# Field of view the varied grids aim at (35 cm × 24 cm, as the fixed grid), within bounds that keep a case cheap
# to generate and cache on a CPU: 96–192 pixels in-plane, 16–64 slices.
_FOV_MM, _Z_MM = 352.0, 240.0
_MATRIX, _SLICES = (96, 192), (16, 64)
_MAX_ROTATION_DEG = 20.0


def varied_geometry(seed: int, spacing: Optional[tuple[float, float]] = None) -> tuple[tuple[int, int, int],
                                                                                       tuple[float, float, float],
                                                                                       np.ndarray]:
    """``(shape, spacing, direction)`` of the grid of varied case ``seed``: in-plane spacing log-uniform in
    :data:`SPACING_RANGE`, thickness uniform in :data:`THICKNESS_RANGE` (or ``spacing`` = ``(in-plane, thickness)``
    fixed), matrix and slice count covering the usual field of view within bounds, rotated in-plane."""
    rng = np.random.default_rng((seed, 17))
    inplane = float(np.exp(rng.uniform(*np.log(SPACING_RANGE))))
    thickness = float(rng.uniform(*THICKNESS_RANGE))
    if spacing is not None:
        inplane, thickness = float(spacing[0]), float(spacing[1])
    matrix = int(np.clip(round(_FOV_MM / inplane), *_MATRIX))
    slices = int(np.clip(round(_Z_MM / thickness), *_SLICES))
    angle = np.deg2rad(rng.uniform(-_MAX_ROTATION_DEG, _MAX_ROTATION_DEG))
    direction = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]])
    return (slices, matrix, matrix), (inplane, inplane, thickness), direction


def phantom_cases(
    name: str,
    count: int,
    seed: int = 1000,
    varied: bool = False,
    family: str = "train",
    spacing: Optional[tuple[float, float]] = None,
) -> list[Case]:
    """``count`` randomised abdominal phantoms (seeds ``seed … seed+count−1``).

    ``varied``: each case on its own grid (:func:`varied_geometry`; ``spacing`` fixes in-plane spacing and
    thickness); ``family``: organ shapes (``"heldout"``: the held-out family).
    """
    from medsam3_core.phantom import LABELS, make_abdomen_phantom

    def loader(s: int):
        def load() -> tuple[Volume, np.ndarray]:
            if varied:
                shape, grid, direction = varied_geometry(s, spacing)
            else:
                shape, grid, direction = PHANTOM_SHAPE, _PHANTOM_SPACING, None
            ct, labels, _ = make_abdomen_phantom(s, shape=shape, spacing=grid, direction=direction, randomize=True,
                                                 family=family)
            return ct, labels.array

        return load

    concepts = {int(k): str(v) for k, v in LABELS.items()}
    prefix = "phantom" if family == "train" else f"phantom-{family}"
    return [Case(name, f"{prefix}-{seed + i}", concepts, loader(seed + i)) for i in range(count)]


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


def _vary_brain(seed: int, template: str = "t1-2mm") -> tuple[Volume, np.ndarray]:
    base, labels = _mni() if template == "t1-2mm" else _template(template)
    rng = np.random.default_rng(seed)
    k, j, i = base.array.shape
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in (k, j, i)], indexing="ij")
    bias = np.exp(sum(rng.uniform(-0.25, 0.25) * g for g in grid) + rng.uniform(-0.15, 0.15) * grid[1] * grid[2])
    array = base.array * bias.astype(np.float32) * rng.uniform(0.7, 1.4)
    array = array + rng.normal(0.0, rng.uniform(0.005, 0.04), size=array.shape).astype(np.float32)
    return Volume(array, base.spacing, base.origin, base.direction, "MR"), labels


#: The heads nilearn ships offline (module docstring), as ``brain_templates`` cycles through them.
BRAIN_TEMPLATES = ("t1-2mm", "t1-1mm", "t2like-2mm")


@lru_cache(maxsize=2)
def _template(template: str) -> tuple[Volume, np.ndarray]:
    """One of :data:`BRAIN_TEMPLATES` other than ``t1-2mm`` as a :class:`Volume` in LPS and its brain mask."""
    from nilearn.datasets import (load_mni152_brain_mask, load_mni152_gm_template, load_mni152_template,
                                  load_mni152_wm_template)

    contrast, _, res = template.partition("-")
    resolution = int(res.removesuffix("mm"))
    mask = np.asarray(load_mni152_brain_mask(resolution=resolution).get_fdata()) > 0.5
    t1 = load_mni152_template(resolution=resolution)
    if contrast == "t1":
        data = np.asarray(t1.get_fdata(), dtype=np.float32)
    else:  # T2-like: fluid (inside the head mask, neither grey nor white matter) bright, white matter dark
        gm = np.asarray(load_mni152_gm_template(resolution=resolution).get_fdata(), dtype=np.float32)
        wm = np.asarray(load_mni152_wm_template(resolution=resolution).get_fdata(), dtype=np.float32)
        head = np.asarray(t1.get_fdata(), dtype=np.float32) > 10
        gm, wm = gm / max(float(gm.max()), 1e-6), wm / max(float(wm.max()), 1e-6)
        fluid = np.clip(1.0 - gm - wm, 0.0, 1.0) * (mask | head)
        data = (60.0 * wm + 110.0 * gm + 220.0 * fluid * mask + 40.0 * head * ~mask).astype(np.float32)
    affine = np.asarray(t1.affine, dtype=float)
    data, labels = data.transpose(2, 1, 0), mask.astype(np.int32).transpose(2, 1, 0)
    if resolution == 1:  # central 64 axial slices: a whole 1 mm head would be 189 slices per cached case
        middle = data.shape[0] // 2
        keep = slice(middle - 32, middle + 32)
        affine[:3, 3] += affine[:3, 2] * keep.start
        data, labels = data[keep], labels[keep]
    ras_to_lps = np.diag([-1.0, -1.0, 1.0])
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    volume = Volume(np.ascontiguousarray(data), tuple(spacing), tuple(ras_to_lps @ affine[:3, 3]),
                    ras_to_lps @ (affine[:3, :3] / spacing), "MR")
    return volume, np.ascontiguousarray(labels)


def brain_template_cases(name: str, count: int, seed: int = 6000) -> list[Case]:
    """``count`` variants cycling through :data:`BRAIN_TEMPLATES`, concept 1 → "brain"."""

    def loader(s: int, template: str):
        return lambda: _vary_brain(s, template)

    picks = [BRAIN_TEMPLATES[i % len(BRAIN_TEMPLATES)] for i in range(count)]
    return [Case(name, f"{t}-{seed + i}", {1: "brain"}, loader(seed + i, t)) for i, t in enumerate(picks)]


def mni_brain_cases(name: str, count: int, seed: int = 5000) -> list[Case]:
    """``count`` intensity variants of the MNI152 head, concept 1 → "brain"."""

    def loader(s: int):
        return lambda: _vary_brain(s)

    return [Case(name, f"mni152-{seed + i}", {1: "brain"}, loader(seed + i)) for i in range(count)]
