"""Overlay pictures for a quick look at a result from a terminal workflow (``--png DIR``).

A handful of slices is chosen where the segmentation says the most (:func:`representative_slices`), each drawn in
radiological orientation with the same window the model saw, the label map filled in the shared segment colours
(:mod:`medsam3_core.io.colors`) with an outline, and a legend giving each prompt's volume and confidence. Matplotlib's
object API (no ``pyplot``) keeps this free of global state, so it is safe from worker threads and servers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence, Union

import numpy as np

from medsam3_core.io.atomic import atomic_path
from medsam3_core.io.colors import label_colormap, segment_color_float
from medsam3_core.errors import InputError
from medsam3_core.io.geometry import Volume
from medsam3_core.windows import IntensityNormalizer, Window
from medsam3_core.segmenter import SegmentInfo
from medsam3_core.io.planes import Plane, plane_for

__all__ = ["representative_slices", "blend", "segment_caption", "write_overlays"]


def representative_slices(plane: Plane, labels: np.ndarray, n: int = 5) -> list[int]:
    """Up to ``n`` slice indices (ascending) that together show the segmentation best.

    Each segment's largest cross-section comes first (largest segments first), then slices at evenly spaced
    quantiles of the labelled area, so a long organ is sampled along its extent. With nothing segmented the slices
    are spread over the middle of the volume, so the picture still shows what the model was given.
    """
    if n < 1:
        raise InputError("The number of overlay slices must be at least 1.")
    per_label = {k: plane.slice_profile(labels == k) for k in np.unique(labels) if k != 0}
    chosen: list[int] = []
    for profile in sorted(per_label.values(), key=lambda p: -int(p.sum())):
        chosen.append(int(np.argmax(profile)))
    total = plane.slice_profile(labels)
    if total.sum() > 0:
        cumulative = np.cumsum(total) / total.sum()
        for q in (np.arange(n) + 0.5) / n:
            chosen.append(int(np.searchsorted(cumulative, q)))
    else:
        chosen.extend(int(round(x)) for x in np.linspace(0.1, 0.9, n) * (plane.count - 1))
    picked = list(dict.fromkeys(chosen))[:n]
    return sorted(picked)


def blend(image: np.ndarray, labels: np.ndarray, n_labels: int, opacity: float = 0.45) -> np.ndarray:
    """Colour a ``[0, 1]`` grey (H, W) or RGB (H, W, 3) image with a label map; returns uint8 (H, W, 3).

    Shared by the viewer and the pictures so both colour a segment the same way.
    """
    rgb = np.asarray(image, dtype=np.float32)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    rgb = rgb[..., :3]
    lut = label_colormap(max(n_labels, int(labels.max(initial=0)))).astype(np.float32) / 255.0
    colour = lut[labels]
    alpha = colour[..., 3:4] * float(opacity)
    out = rgb * (1.0 - alpha) + colour[..., :3] * alpha
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def segment_caption(segment: SegmentInfo, planar: bool = False) -> str:
    """One legend line: the prompt (and the concept the model was asked, when a synonym changed it), size, score.

    Size is the volume in mL, or the area in pixels for a single 2D image (``planar``), where mL means nothing.
    """
    name = segment.prompt if segment.concept in ("", segment.prompt) else f"{segment.prompt} → {segment.concept}"
    size = f"{segment.voxels} px" if planar else f"{segment.volume_ml:.1f} mL"
    return f"{name}: {size}, score {segment.score:.2f}"


def write_overlays(
    volume: Volume,
    labelmap: Volume,
    segments: Sequence[SegmentInfo],
    out_dir: Union[str, Path],
    n: int = 5,
    slice_axis: str = "axial",
    *,
    window: Window = None,
    opacity: float = 0.45,
) -> list[Path]:
    """Write ``n`` PNG pictures of representative ``slice_axis`` slices to ``out_dir``; returns their paths.

    Files are named ``<slice_axis>_<index>.png`` (index along the slice axis, zero-based, as in the report's slice
    ranges) and written atomically.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        raise InputError("Overlay pictures need matplotlib: pip install 'medsam3[gui]' (or matplotlib).") from None

    if not labelmap.same_geometry(volume):
        raise InputError("The label map does not lie on the grid of the image it should be drawn over.")
    plane = plane_for(volume, slice_axis)
    labels = np.asarray(labelmap.array).astype(np.int64)
    normalizer = IntensityNormalizer.for_volume(volume, window)
    n_labels = max([s.label for s in segments] + [int(labels.max(initial=0))])
    planar = volume.shape[0] == 1
    legend = [
        Patch(facecolor=segment_color_float(s.label), edgecolor="white", label=segment_caption(s, planar))
        for s in segments
    ]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in representative_slices(plane, labels, n):
        image = normalizer(plane.extract(volume.array, index))
        label_slice = np.ascontiguousarray(plane.extract(labels, index))
        fig = Figure(figsize=(6.4, 6.4 * min(2.0, max(0.5, plane.aspect * image.shape[0] / image.shape[1]))),
                     dpi=100, facecolor="black")
        FigureCanvasAgg(fig)
        ax = fig.add_axes((0.0, 0.0, 1.0, 0.93))
        ax.imshow(blend(image, label_slice, n_labels, opacity), aspect=plane.aspect, interpolation="nearest")
        for s in segments:
            if np.any(label_slice == s.label):
                ax.contour(label_slice == s.label, levels=[0.5], colors=[segment_color_float(s.label)],
                           linewidths=1.0)
        ax.set_axis_off()
        where = "" if plane.count == 1 else f"{slice_axis} slice {index} of {plane.count - 1}  ·  "
        fig.suptitle(f"{where}window: {normalizer.description}", color="white", fontsize=9, y=0.985)
        if legend:
            ax.legend(handles=legend, loc="lower left", fontsize=8, framealpha=0.6, facecolor="black",
                      labelcolor="white", edgecolor="none")
        target = out_dir / f"{slice_axis}_{index:04d}.png"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
        written.append(target)
    return written
