"""A synthetic abdominal CT with known organ masks, for tests, the demo and CPU training data.

Why synthetic: no patient scan may be bundled or downloaded here, yet every layer (reader, slicing, model, export,
Slicer import) must be checked against a ground truth on a realistic-looking CT. The phantom is drawn in *patient*
(LPS) space — each voxel centre is mapped through the volume's direction and spacing before the anatomy is evaluated
— so the organs sit on the correct side of the patient whatever the voxel axes are (oblique, flipped, anisotropic).

Anatomy is scaled to the field of view (the body fills ~90 % of the in-plane width; organs occupy fixed fractions
of the head-foot extent), so any shape/spacing gives a complete abdomen. Labels: 1 liver (patient's right,
reaching the dome), 2 spleen (left, posterolateral), 3 kidney (both kidneys, posterior either side of the spine,
lower than the liver dome), 4 aorta (left-anterior of the vertebrae, over the whole range). HU: air −1000,
fat −100, muscle 50, liver ~60, spleen ~50 with coarser texture, kidney cortex ~150 and medulla ~100 (contrast),
aorta ~180, cortical bone ~700 around marrow ~250, plus Gaussian noise.

``python -m medsam3_core.phantom --write-demo`` regenerates the bundled demo scan in ``assets/``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence

import numpy as np
from scipy import ndimage

from medsam3_core.io.atomic import atomic_path
from medsam3_core.io.geometry import Volume

__all__ = [
    "LABELS",
    "SHAPE_FAMILIES",
    "make_abdomen_phantom",
    "DemoPaths",
    "demo_paths",
    "demo_label_names",
    "write_demo_assets",
    "DEMO_SHAPE",
    "DEMO_SPACING",
    "DEMO_DIRECTION",
]

LABELS: dict[int, str] = {1: "liver", 2: "spleen", 3: "kidney", 4: "aorta"}

# Tissue classes painted into the phantom: (mean HU, texture amplitude HU, label).
_TISSUES = {
    "air": (-1000.0, 0.0, 0),
    "fat": (-100.0, 10.0, 0),
    "muscle": (50.0, 5.0, 0),
    "soft": (35.0, 8.0, 0),  # bowel wall, mesentery, pancreas-like soft tissue
    "fluid": (15.0, 3.0, 0),  # bowel / stomach content
    "gas": (-900.0, 30.0, 0),
    "liver": (60.0, 4.0, 1),
    "spleen": (50.0, 9.0, 2),
    "cortex": (150.0, 6.0, 3),
    "medulla": (100.0, 6.0, 3),
    "sinus": (-60.0, 10.0, 0),  # renal sinus fat: inside the kidney outline, not kidney tissue
    "aorta": (180.0, 4.0, 4),
    "ivc": (120.0, 4.0, 0),
    "bone": (700.0, 60.0, 0),
    "marrow": (250.0, 40.0, 0),
    "disc": (80.0, 6.0, 0),
    "csf": (10.0, 3.0, 0),
}
_NAMES = list(_TISSUES)
_T = {name: n for n, name in enumerate(_NAMES)}

DEMO_SHAPE = (48, 160, 160)
DEMO_SPACING = (2.2, 2.2, 5.0)
# 12° in-plane rotation and slices stored head→feet (k along −z): a realistic, non-identity, left-handed grid.
_A = np.deg2rad(12.0)
DEMO_DIRECTION = np.array([[np.cos(_A), -np.sin(_A), 0.0], [np.sin(_A), np.cos(_A), 0.0], [0.0, 0.0, -1.0]])
_ASSETS = Path(__file__).resolve().parent / "assets"


# ------------------------------------------------------------------------------------------------------ canvas
class _Canvas:
    """Maps voxel indices to normalised body coordinates and paints tissues into a sub-box at a time.

    Body coordinates: ``u`` = LPS x / half body width (−1 patient right … +1 left), ``v`` = LPS y / half body depth
    (−1 anterior … +1 posterior), ``w`` = 0 at the lowest and 1 at the highest LPS z of the field of view.
    Painting only the index box around each structure keeps a 32×128×128 phantom well under 50 ms.
    """

    def __init__(self, volume: Volume, half_width: float, half_depth: float):
        self.shape = volume.shape
        corners = np.array([[i, j, k] for i in (0, self.shape[2] - 1) for j in (0, self.shape[1] - 1)
                            for k in (0, self.shape[0] - 1)], dtype=float)
        lps = volume.physical_points(corners)
        centre = (lps.min(0) + lps.max(0)) / 2
        z_lo, z_span = lps[:, 2].min(), lps[:, 2].max() - lps[:, 2].min()
        if self.shape[0] == 1:  # a single slice is the middle of the abdomen (w = 0.5), not its bottom
            z_span = 1e6
            z_lo = centre[2] - z_span / 2
        scale = np.array([half_width, half_depth, z_span])
        offset = np.array([centre[0], centre[1], z_lo])
        m = volume.ijk_to_lps()
        # uvw = A @ (i, j, k) + b
        self.a = m[:3, :3] / scale[:, None]
        self.b = (m[:3, 3] - offset) / scale
        self.inv = np.linalg.inv(self.a)
        self.tissue = np.full(self.shape, _T["air"], dtype=np.uint8)

    def box(
        self, lo: Sequence[float], hi: Sequence[float]
    ) -> Optional[tuple[tuple[slice, ...], tuple[np.ndarray, ...]]]:
        """Index slices covering the ``uvw`` box and the (broadcast) ``u, v, w`` of those voxels, or None if empty."""
        corners = np.array([[u, v, w] for u in (lo[0], hi[0]) for v in (lo[1], hi[1]) for w in (lo[2], hi[2])])
        ijk = (self.inv @ (corners - self.b).T).T
        ranges = [self._clip(ijk[:, axis], self.shape[2 - axis]) for axis in (2, 1, 0)]
        if any(r[0] >= r[1] for r in ranges):
            return None
        k, j, i = (np.arange(*r, dtype=np.float32) for r in ranges)
        k, j, i = k[:, None, None], j[None, :, None], i[None, None, :]
        # Only the index axes a coordinate depends on are broadcast, so axis-aligned grids stay 1D per coordinate.
        uvw = tuple(
            sum((c * x for c, x in zip(self.a[n], (i, j, k), strict=True) if abs(c) > 1e-12), np.float32(self.b[n]))
            for n in range(3)
        )
        return tuple(slice(*r) for r in ranges), uvw

    @staticmethod
    def _clip(values: np.ndarray, n: int) -> tuple[int, int]:
        return max(0, int(np.floor(values.min()))), min(n, int(np.ceil(values.max())) + 1)

    def paint(
        self,
        mask_fn: Callable[..., np.ndarray],
        lo: Sequence[float],
        hi: Sequence[float],
        tissue: str,
        inside: Optional[Sequence[str]] = None,
    ) -> None:
        """Set voxels where ``mask_fn(u, v, w)`` holds (optionally only over the given tissues) to ``tissue``."""
        found = self.box(lo, hi)
        if found is None:
            return
        slices, (u, v, w) = found
        region = self.tissue[slices]
        mask = np.broadcast_to(mask_fn(u, v, w), region.shape)
        if inside is not None:
            allowed = np.zeros(len(_T), dtype=bool)
            allowed[[_T[t] for t in inside]] = True
            mask = mask & allowed[region]
        region[mask] = _T[tissue]


@dataclass
class _Ellipsoid:
    """An ellipsoid in body coordinates, rotated by ``angle`` (radians) in the axial (u, v) plane."""

    centre: tuple[float, float, float]
    radii: tuple[float, float, float]
    angle: float = 0.0

    def bounds(self, grow: float = 1.0) -> tuple[list[float], list[float]]:
        r = max(self.radii[0], self.radii[1]) * grow
        c = self.centre
        return [c[0] - r, c[1] - r, c[2] - self.radii[2] * grow], [c[0] + r, c[1] + r, c[2] + self.radii[2] * grow]

    def inside(self, u, v, w, grow: float = 1.0):
        du, dv, dw = u - self.centre[0], v - self.centre[1], w - self.centre[2]
        if self.angle:
            cs, sn = np.cos(self.angle), np.sin(self.angle)
            du, dv = cs * du + sn * dv, -sn * du + cs * dv
        rx, ry, rz = (r * grow for r in self.radii)
        return (du / rx) ** 2 + (dv / ry) ** 2 + (dw / rz) ** 2 <= 1.0

    def paint(self, canvas: _Canvas, tissue: str, grow: float = 1.0, inside: Optional[Sequence[str]] = None) -> None:
        lo, hi = self.bounds(grow)
        canvas.paint(lambda u, v, w: self.inside(u, v, w, grow), lo, hi, tissue, inside)


# ------------------------------------------------------------------------------------------------------ anatomy
#: Organ-shape families. ``train`` is the phantom every model here was trained on. ``heldout`` reshapes the organs
#: (radius factors ``(u, v, w)`` and an extra in-plane rotation per organ, plus a caudal liver lobe), so a model
#: scored on it meets organ shapes it never saw, not just new random draws of the same shapes.
SHAPE_FAMILIES: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "train": {},
    "heldout": {
        "liver": (1.12, 0.85, 1.15, 0.2),
        "spleen": (1.25, 0.85, 1.25, 0.35),
        "kidney": (0.85, 1.2, 1.15, -0.3),
    },
}


def _shaped(family: dict, organ: str, radii: Sequence[float], angle: float) -> tuple[tuple[float, ...], float]:
    fu, fv, fw, turn = family.get(organ, (1.0, 1.0, 1.0, 0.0))
    return (radii[0] * fu, radii[1] * fv, radii[2] * fw), angle + turn


def _jitter(rng: Optional[np.random.Generator], value: float, spread: float) -> float:
    return value if rng is None else float(value + rng.uniform(-spread, spread))


def _scaled(rng: Optional[np.random.Generator], radii: Sequence[float], spread: float = 0.15) -> tuple[float, ...]:
    f = 1.0 if rng is None else rng.uniform(1 - spread, 1 + spread)
    return tuple(float(r * f * (1.0 if rng is None else rng.uniform(0.93, 1.07))) for r in radii)


def _draw_anatomy(canvas: _Canvas, rng: Optional[np.random.Generator], family: str = "train") -> None:
    shapes = SHAPE_FAMILIES[family]

    def j(value: float, spread: float) -> float:  # short name keeps the anatomy table readable
        return _jitter(rng, value, spread)

    # Body wall: fat under the skin, a muscle ring, then the abdominal cavity (intra-abdominal fat).
    fat_t, muscle_t = j(0.10, 0.04), j(0.06, 0.02)
    everywhere = ([-1.2, -1.2, -0.1], [1.2, 1.2, 1.1])
    canvas.paint(lambda u, v, w: u * u + v * v <= 1.0, *everywhere, "fat")
    r_muscle = 1 - fat_t
    canvas.paint(lambda u, v, w: u * u + v * v <= r_muscle**2, *everywhere, "muscle")
    r_cavity = r_muscle - muscle_t
    canvas.paint(lambda u, v, w: u * u + v * v <= r_cavity**2, *everywhere, "fat")

    # Colon: ascending on the right, descending on the left, running head-foot with gas and stool.
    for side in (-1.0, 1.0):
        cu, cv, r = side * j(0.58, 0.05), j(0.05, 0.08), j(0.11, 0.02)
        top = j(0.55, 0.08)
        canvas.paint(lambda u, v, w, cu=cu, cv=cv, r=r, top=top: ((u - cu) ** 2 + (v - cv) ** 2 <= r * r) & (w < top),
                     [cu - r, cv - r, -0.1], [cu + r, cv + r, top], "soft", inside=["fat"])
        canvas.paint(lambda u, v, w, cu=cu, cv=cv, r=r * 0.75, top=top: ((u - cu) ** 2 + (v - cv) ** 2 <= r * r)
                     & (w < top) & (v < cv + r * 0.3 * np.sin(12 * w)),
                     [cu - r, cv - r, -0.1], [cu + r, cv + r, top], "gas", inside=["soft"])

    # Small-bowel loops filling the lower and central abdomen: a soft-tissue wall around fluid or gas.
    loop_rng = rng if rng is not None else np.random.default_rng(7)
    for _ in range(int(loop_rng.integers(14, 22)) if rng is not None else 18):
        c = (loop_rng.uniform(-0.45, 0.45), loop_rng.uniform(-0.7, 0.15), loop_rng.uniform(0.0, 0.6))
        r = loop_rng.uniform(0.07, 0.12)
        loop = _Ellipsoid(c, (r, r * loop_rng.uniform(0.6, 1.3), loop_rng.uniform(0.05, 0.12)), loop_rng.uniform(0, 3))
        loop.paint(canvas, "soft", grow=1.3, inside=["fat"])
        loop.paint(canvas, "gas" if loop_rng.random() < 0.25 else "fluid", inside=["soft"])

    # Stomach: left upper quadrant, anterior; air-fluid content.
    stomach = _Ellipsoid((j(0.35, 0.05), j(-0.35, 0.05), j(0.78, 0.05)), _scaled(rng, (0.22, 0.2, 0.16)))
    stomach.paint(canvas, "soft", grow=1.15, inside=["fat", "soft", "fluid", "gas"])
    stomach.paint(canvas, "fluid")
    canvas.paint(lambda u, v, w: stomach.inside(u, v, w) & (v < stomach.centre[1] - 0.05), *stomach.bounds(),
                 "gas", inside=["fluid"])

    # Liver: a large right lobe reaching the dome and a smaller left lobe crossing the midline anteriorly.
    right_lobe = _Ellipsoid((j(-0.42, 0.05), j(-0.05, 0.05), j(0.74, 0.04)),
                            *_shaped(shapes, "liver", _scaled(rng, (0.42, 0.55, 0.27)), j(0.25, 0.15)))
    left_lobe = _Ellipsoid((right_lobe.centre[0] + j(0.45, 0.05), j(-0.38, 0.05), right_lobe.centre[2] + 0.07),
                           _scaled(rng, (0.3, 0.2, 0.14)), j(-0.3, 0.15))
    lobes = [right_lobe, left_lobe]
    if family != "train":  # a caudal (Riedel-like) extension of the right lobe, which the training shapes lack
        c = right_lobe.centre
        lobes.append(_Ellipsoid((c[0] - 0.08, c[1] + 0.1, c[2] - right_lobe.radii[2] * 0.9), (0.16, 0.22, 0.2), 0.3))
    for lobe in lobes:
        lobe.paint(canvas, "liver", inside=["soft", "fat", "fluid", "gas"])

    # Spleen: left, posterolateral, a flattened crescent.
    spleen = _Ellipsoid((j(0.6, 0.04), j(0.3, 0.05), j(0.72, 0.05)),
                        *_shaped(shapes, "spleen", _scaled(rng, (0.17, 0.3, 0.16)), j(-0.6, 0.2)))
    hollow = _Ellipsoid((spleen.centre[0] - 0.16, spleen.centre[1] - 0.03, spleen.centre[2]),
                        (spleen.radii[0] * 0.7, spleen.radii[1] * 0.75, spleen.radii[2] * 1.2), spleen.angle)
    canvas.paint(lambda u, v, w: spleen.inside(u, v, w) & ~hollow.inside(u, v, w), *spleen.bounds(), "spleen",
                 inside=["soft", "fat", "fluid", "gas"])

    # Great vessels: aorta left-anterior of the spine, IVC to the right; tubes over the whole range.
    aorta_c, aorta_r = (j(0.08, 0.02), j(0.28, 0.02)), j(0.075, 0.01)
    ivc_c, ivc_r = (j(-0.14, 0.02), j(0.27, 0.02)), j(0.08, 0.01)
    for (cu, cv), r, tissue in ((aorta_c, aorta_r, "aorta"), (ivc_c, ivc_r, "ivc")):
        canvas.paint(lambda u, v, w, cu=cu, cv=cv, r=r: (u - cu) ** 2 + (v - cv) ** 2 <= r * r,
                     [cu - r, cv - r, -0.1], [cu + r, cv + r, 1.1], tissue)

    # Spine: vertebral bodies (cortex around marrow) separated by discs, a bony arch around the spinal canal,
    # paraspinal muscles either side.
    body_v, body_r = j(0.5, 0.03), j(0.15, 0.02)
    canal_v, canal_r = body_v + body_r + 0.07, 0.055
    period = j(0.3, 0.05)
    phase = 0.0 if rng is None else rng.uniform(0, period)
    disc = 0.22 * period
    for side in (-1.0, 1.0):  # erector spinae behind, psoas beside the vertebrae (thicker lower down)
        canvas.paint(lambda u, v, w, s=side: ((u - s * 0.2) / 0.16) ** 2 + ((v - 0.8) / 0.15) ** 2 <= 1,
                     [side * 0.2 - 0.16, 0.65, -0.1], [side * 0.2 + 0.16, 0.95, 1.1], "muscle")
        canvas.paint(lambda u, v, w, s=side: (u - s * 0.17) ** 2 + (v - body_v) ** 2 <= (0.09 - 0.07 * w) ** 2,
                     [side * 0.17 - 0.1, body_v - 0.1, -0.1], [side * 0.17 + 0.1, body_v + 0.1, 0.9], "muscle")
    box = ([-body_r, body_v - body_r, -0.1], [body_r, 0.95, 1.1])

    def in_disc(w):
        return np.mod(w - phase, period) < disc

    def vertebra(u, v, w):
        body = u * u + (v - body_v) ** 2 <= body_r**2
        arch = u * u + (v - canal_v) ** 2 <= (canal_r + 0.035) ** 2
        spinous = (np.abs(u) < 0.025) & (v > canal_v) & (v < 0.93)
        return (body | arch | spinous) & ~in_disc(w)

    canvas.paint(vertebra, *box, "bone")
    canvas.paint(lambda u, v, w: (u * u + (v - body_v) ** 2 <= (body_r * 0.8) ** 2) & ~in_disc(w), *box, "marrow")
    canvas.paint(lambda u, v, w: (u * u + (v - body_v) ** 2 <= body_r**2) & in_disc(w), *box, "disc")
    canvas.paint(lambda u, v, w: u * u + (v - canal_v) ** 2 <= canal_r**2, *box, "csf")

    # Kidneys (drawn last, so nothing cuts them apart): posterior either side of the spine, the right one a
    # little lower (pushed down by the liver).
    for side, drop in ((-1.0, 0.04), (1.0, 0.0)):
        radii, angle = _shaped(shapes, "kidney", _scaled(rng, (0.13, 0.17, 0.17)), j(0.45, 0.15))
        kidney = _Ellipsoid((side * j(0.38, 0.04), j(0.45, 0.04), j(0.36, 0.04) - drop), radii, side * angle)
        kidney.paint(canvas, "cortex", inside=["fat", "soft", "fluid", "gas", "liver"])
        kidney.paint(canvas, "medulla", grow=0.72, inside=["cortex"])
        sinus = _Ellipsoid((kidney.centre[0] - side * 0.09, kidney.centre[1] - 0.04, kidney.centre[2]),
                           (kidney.radii[0] * 0.5, kidney.radii[1] * 0.35, kidney.radii[2] * 0.45), kidney.angle)
        sinus.paint(canvas, "sinus", inside=["cortex", "medulla"])


def _drop_fragments(tissue: np.ndarray, label_map: np.ndarray) -> None:
    """Keep each organ in one piece (kidneys: two), in place.

    Structures drawn later (vessels, muscles) can shave voxel-thin slivers off an organ's edge; a real organ is
    one connected body, so the slivers become soft tissue in both the image and the label map.
    """
    for label, box in enumerate(ndimage.find_objects(label_map), start=1):
        if box is None:
            continue
        components, n = ndimage.label(label_map[box] == label)
        keep = 2 if LABELS[label] == "kidney" else 1
        if n <= keep:
            continue
        sizes = np.bincount(components.ravel())[1:]
        stray = np.isin(components, np.argsort(sizes)[:-keep] + 1)
        tissue[box][stray] = _T["soft"]
        label_map[box][stray] = 0


# ------------------------------------------------------------------------------------------------------ public
def make_abdomen_phantom(
    seed: int = 0,
    shape: tuple[int, int, int] = (32, 128, 128),
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
    direction: Optional[np.ndarray] = None,
    randomize: bool = True,
    family: str = "train",
) -> tuple[Volume, Volume, dict[int, str]]:
    """Generate a CT-like abdomen and its label map on the same grid.

    Args:
        seed: drives organ shapes/positions/intensities (when ``randomize``) and the noise.
        shape: ``(K, J, I)`` voxels; ``spacing``: ``(di, dj, dk)`` mm; ``direction``: 3×3 columns = i, j, k in LPS
            (default identity). The anatomy is drawn in patient space, so any direction gives the same patient.
        randomize: vary organ sizes, positions, rotations, HU and noise; ``False`` gives the canonical phantom
            (only the noise depends on ``seed``).
        family: organ shapes, a key of :data:`SHAPE_FAMILIES` (``"heldout"``: shapes no training case has).

    Returns:
        ``(ct, labels, names)``: ``ct`` int16 HU (modality ``"CT"``), ``labels`` uint8 (0 background) and
        ``{label: organ name}`` (:data:`LABELS`).
    """
    if family not in SHAPE_FAMILIES:
        raise ValueError(f"unknown phantom family {family!r}; use one of {', '.join(SHAPE_FAMILIES)}")
    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in shape)
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    extent = np.array(spacing, dtype=float)[:2] * np.array(shape[:0:-1])  # in-plane (x, y) size in mm
    grid = Volume(np.empty(shape, dtype=np.uint8), spacing, (0.0, 0.0, 0.0), direction)
    # centre the field of view on the LPS origin
    centre = grid.physical_points([[(shape[2] - 1) / 2, (shape[1] - 1) / 2, (shape[0] - 1) / 2]])[0]
    grid.origin = tuple(-centre)
    half_width = 0.45 * min(extent) * (rng.uniform(0.9, 1.05) if randomize else 1.0)
    half_depth = half_width * (rng.uniform(0.65, 0.8) if randomize else 0.72)
    canvas = _Canvas(grid, half_width, half_depth)
    _draw_anatomy(canvas, rng if randomize else None, family)

    means = np.array([_TISSUES[t][0] for t in _NAMES], dtype=np.float32)
    textures = np.array([_TISSUES[t][1] for t in _NAMES], dtype=np.float32)
    labels_lut = np.array([_TISSUES[t][2] for t in _NAMES], dtype=np.uint8)
    if randomize:
        means += rng.normal(0.0, 6.0, size=means.shape).astype(np.float32) * (means > -500)
    tissue = canvas.tissue
    label_map = labels_lut[tissue]
    _drop_fragments(tissue, label_map)
    # White noise (the scanner's) plus a spatially correlated texture per tissue (its smoothed version, ~unit SD).
    # In-place arithmetic: this block dominates the run time of a 32×128×128 phantom.
    noise = rng.standard_normal(shape, dtype=np.float32)
    texture = ndimage.uniform_filter(noise, size=(1, 3, 3))
    texture *= (textures * np.float32(3.0))[tissue]
    noise *= np.float32(rng.uniform(8.0, 20.0) if randomize else 12.0)
    hu = means[tissue]
    hu += texture
    hu += noise
    np.rint(hu, out=hu)
    np.clip(hu, -1024, 3071, out=hu)
    ct = grid.with_array(hu.astype(np.int16), modality="CT")
    ct.metadata = {"source": "phantom", "seed": int(seed), "randomize": bool(randomize)}
    if family != "train":
        ct.metadata["family"] = family
    labels = grid.with_array(label_map)
    labels.metadata = {"source": "phantom", "seed": int(seed)}
    return ct, labels, dict(LABELS)


class DemoPaths(NamedTuple):
    """Files of the bundled demo scan."""

    ct: Path
    labels: Path
    names: Path


def demo_paths() -> DemoPaths:
    """Paths of the bundled demo CT, its ground-truth labels and their ``{label: name}`` JSON."""
    return DemoPaths(_ASSETS / "demo_ct.nii.gz", _ASSETS / "demo_labels.nii.gz", _ASSETS / "demo_labels.json")


def demo_label_names() -> dict[int, str]:
    """``{label: organ}`` of the bundled demo labels."""
    return {int(k): v for k, v in json.loads(demo_paths().names.read_text()).items()}


def write_demo_assets(folder: Optional[Path] = None) -> DemoPaths:
    """(Re)generate the deterministic demo scan: canonical phantom, 48×160×160, 2.2×2.2×5 mm, oblique, flipped."""
    from medsam3_core.io.reading import write_volume  # io pulls in SimpleITK and pydicom; the phantom needs neither

    paths = demo_paths() if folder is None else DemoPaths(*(Path(folder) / p.name for p in demo_paths()))
    ct, labels, names = make_abdomen_phantom(0, DEMO_SHAPE, DEMO_SPACING, DEMO_DIRECTION, randomize=False)
    write_volume(ct, paths.ct)
    write_volume(labels, paths.labels)
    with atomic_path(paths.names) as tmp:
        tmp.write_text(json.dumps({str(k): v for k, v in names.items()}, indent=1) + "\n")
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m medsam3_core.phantom", description=__doc__.split("\n")[0])
    parser.add_argument("--write-demo", action="store_true", help="regenerate the bundled demo scan")
    parser.add_argument("--out", type=Path, default=None, help="folder for the demo files (default: the package)")
    args = parser.parse_args(argv)
    if not args.write_demo:
        parser.print_help()
        return 2
    for path in write_demo_assets(args.out):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
