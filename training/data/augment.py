"""Training augmentations on a normalised slice (values in [0, 1]) and its label map, applied together.

Geometric: random zoom, translation and rotation — organ size and position vary between patients and scanners.
Photometric: contrast/brightness, gamma and Gaussian noise, within ranges that keep tissue classes ordered (the
window chosen by preprocessing stays meaningful).

Two settings (:data:`AUGMENT_PRESETS`, chosen by ``data.augment_preset``):

* ``default`` — the shipped demo model's: zoom 0.8–1.25, shift ±10 %, rotation ±12°, no flips (left/right is
  anatomy: "left kidney", the liver on the patient's right), mild intensity changes.
* ``robust`` — for a model that must survive scans unlike its training data: zoom 0.7–1.4, rotation ±30°, a flip
  of either in-plane axis with probability 0.25 each, and stronger intensity jitter. Flips teach the model that
  an organ may sit on the other side. That costs the laterality cue, but it keeps the model working on a scan
  whose orientation was mishandled on the way (a common NIfTI accident). A flip never swaps concepts; keep this
  preset away from concepts named by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["AugmentSettings", "AUGMENT_PRESETS", "augment_pair"]


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of one augmentation recipe (module docstring)."""

    zoom: tuple[float, float] = (0.8, 1.25)
    shift: float = 0.1
    rotation_deg: float = 12.0
    flip_prob: float = 0.0
    contrast: tuple[float, float] = (0.8, 1.2)
    brightness: float = 0.08
    gamma_log: float = 0.25
    noise: float = 0.03


AUGMENT_PRESETS: dict[str, AugmentSettings] = {
    "default": AugmentSettings(),
    "robust": AugmentSettings(zoom=(0.7, 1.4), shift=0.12, rotation_deg=30.0, flip_prob=0.25, contrast=(0.7, 1.4),
                              brightness=0.15, gamma_log=0.4, noise=0.05),
}


def augment_pair(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    settings: AugmentSettings = AUGMENT_PRESETS["default"],
) -> tuple[np.ndarray, np.ndarray]:
    """Randomly transformed copies of ``image (H, W[, C])`` in [0, 1] and ``labels (H, W)`` (same geometry).

    The geometry is drawn first (zoom, rotation, shift, then flips when ``settings.flip_prob`` > 0), so a generator
    restarted from one seed gives every call the same geometry: tracker clips rely on that.
    """
    h, w = labels.shape
    zoom = math.exp(rng.uniform(math.log(settings.zoom[0]), math.log(settings.zoom[1])))
    angle = math.radians(rng.uniform(-settings.rotation_deg, settings.rotation_deg))
    shift = rng.uniform(-settings.shift, settings.shift, size=2) * np.array([h, w])
    flips = rng.random(2) < settings.flip_prob if settings.flip_prob > 0 else np.zeros(2, bool)
    # Output pixel o maps to input pixel M·(o − c) + c − shift: rotation+zoom about the centre c; a flip negates
    # a column of M, mirroring the output about the centre.
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) / zoom
    rot = rot * np.where(flips, -1.0, 1.0)[None, :]
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - rot @ centre - shift
    lab = ndimage.affine_transform(labels, rot, offset=offset, order=0, mode="constant", cval=0)
    if image.ndim == 3:
        channels = [image[..., c] for c in range(image.shape[-1])]
        img = np.stack([ndimage.affine_transform(c, rot, offset=offset, order=1, mode="nearest") for c in channels], -1)
    else:
        img = ndimage.affine_transform(image, rot, offset=offset, order=1, mode="nearest")
    contrast = rng.uniform(*settings.contrast)
    brightness = rng.uniform(-settings.brightness, settings.brightness)
    img = np.clip((img - 0.5) * contrast + 0.5 + brightness, 0.0, 1.0)
    img = img ** math.exp(rng.uniform(-settings.gamma_log, settings.gamma_log))
    img = img + rng.normal(0.0, rng.uniform(0.0, settings.noise), size=img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32), lab
