"""One colour table for segments, shared by the CLI overlay pictures, the standalone viewer and the Slicer module.

Label ``k`` (the k-th prompt) gets the same colour everywhere, so a picture from ``--png`` matches what the viewer
and Slicer show. The first twelve colours are hand-picked to stay distinct from each other and from grey CT/MR
backgrounds (saturated, mid-to-high luminance, no greys); later labels walk the hue circle by the golden angle so
neighbouring labels never look alike.
"""

from __future__ import annotations

import colorsys

import numpy as np

__all__ = ["segment_color", "segment_color_float", "label_colormap", "hex_color"]

_BASE: tuple[tuple[int, int, int], ...] = (
    (230, 80, 60),  # red
    (60, 180, 75),  # green
    (70, 130, 230),  # blue
    (245, 200, 50),  # yellow
    (170, 80, 210),  # purple
    (40, 200, 200),  # cyan
    (240, 130, 200),  # pink
    (150, 200, 60),  # lime
    (250, 150, 40),  # orange
    (120, 100, 240),  # indigo
    (200, 160, 120),  # tan
    (0, 150, 130),  # teal
)
_GOLDEN = 0.618033988749895


def segment_color(index: int) -> tuple[int, int, int]:
    """RGB (0–255) of label ``index`` (1-based, as in the label map; 0 is background and has no colour)."""
    if index < 1:
        raise ValueError(f"segment labels start at 1, got {index}")
    if index <= len(_BASE):
        return _BASE[index - 1]
    hue = (0.07 + (index - len(_BASE)) * _GOLDEN) % 1.0
    lightness = 0.55 if index % 2 else 0.65
    r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def segment_color_float(index: int) -> tuple[float, float, float]:
    """:func:`segment_color` in 0–1 floats (matplotlib, Slicer's ``SetColor``)."""
    return tuple(c / 255.0 for c in segment_color(index))  # type: ignore[return-value]


def hex_color(index: int) -> str:
    """:func:`segment_color` as ``#rrggbb`` (Qt style sheets, HTML legends)."""
    return "#{:02x}{:02x}{:02x}".format(*segment_color(index))


def label_colormap(n_labels: int, alpha: int = 255) -> np.ndarray:
    """``(n_labels + 1, 4)`` uint8 RGBA lookup table: row 0 transparent, row k = label k with ``alpha``.

    Index it with a label map (``lut[labels]``) to colour a whole slice at once.
    """
    lut = np.zeros((n_labels + 1, 4), dtype=np.uint8)
    for k in range(1, n_labels + 1):
        lut[k, :3] = segment_color(k)
        lut[k, 3] = alpha
    return lut
