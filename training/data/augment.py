"""Training augmentations on a normalised slice (values in [0, 1]) and its label map, applied together.

Geometric: random zoom (0.8–1.25), translation (±10 %) and rotation (±12°) — organ size and position vary between
patients and scanners. No flips: left/right is anatomy ("left kidney"), and a flipped image would teach the model
that laterality does not matter. Photometric: contrast/brightness, gamma and Gaussian noise, within ranges that keep
tissue classes ordered (the window chosen by preprocessing stays meaningful).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

__all__ = ["augment_pair"]


def augment_pair(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Randomly transformed copies of ``image (H, W[, C])`` in [0, 1] and ``labels (H, W)`` (same geometry)."""
    h, w = labels.shape
    zoom = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    angle = math.radians(rng.uniform(-12.0, 12.0))
    shift = rng.uniform(-0.1, 0.1, size=2) * np.array([h, w])
    # Output pixel o maps to input pixel M·(o − c) + c − shift: rotation+zoom about the centre c.
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) / zoom
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - rot @ centre - shift
    lab = ndimage.affine_transform(labels, rot, offset=offset, order=0, mode="constant", cval=0)
    if image.ndim == 3:
        channels = [image[..., c] for c in range(image.shape[-1])]
        img = np.stack([ndimage.affine_transform(c, rot, offset=offset, order=1, mode="nearest") for c in channels], -1)
    else:
        img = ndimage.affine_transform(image, rot, offset=offset, order=1, mode="nearest")
    contrast = rng.uniform(0.8, 1.2)
    brightness = rng.uniform(-0.08, 0.08)
    img = np.clip((img - 0.5) * contrast + 0.5 + brightness, 0.0, 1.0)
    img = img ** math.exp(rng.uniform(-0.25, 0.25))
    img = img + rng.normal(0.0, rng.uniform(0.0, 0.03), size=img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32), lab
