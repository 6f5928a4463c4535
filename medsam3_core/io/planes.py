"""Which array axes a slice view shows, and which way round, so every picture is in radiological orientation.

The array of a :class:`~medsam3_core.io.geometry.Volume` is indexed ``[k, j, i]`` in whatever order the scanner wrote
it; a picture must not depend on that. A :class:`Plane` is chosen from the direction matrix: for each view the
screen's right and down directions are fixed anatomical directions (radiological convention: the patient's right on
the left of the screen, anterior up in axial views, superior up in coronal and sagittal views), and the two in-plane
array axes are assigned and flipped to match them. Pure numpy, shared by the viewer and the CLI's ``--png`` pictures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medsam3_core.io.geometry import Volume
from medsam3_core.segmenter import SLICE_AXES

__all__ = ["Plane", "plane_for", "SCREEN_DIRECTIONS"]

#: LPS unit vectors pointing to the screen's right and down for each view.
SCREEN_DIRECTIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # right → patient left, down → posterior
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),  # right → patient left, down → inferior
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # right → posterior, down → inferior
}


@dataclass(frozen=True)
class Plane:
    """How to cut a ``[k, j, i]`` array for one view.

    Attributes:
        view: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        axis: array axis that is sliced (0 = k, 1 = j, 2 = i).
        rows_axis, cols_axis: array axes shown top-to-bottom and left-to-right.
        flip_rows, flip_cols: reverse that axis so it points the way :data:`SCREEN_DIRECTIONS` says.
        row_spacing, col_spacing: mm per displayed pixel down and across (for the aspect ratio).
        count: number of slices along ``axis``.
    """

    view: str
    axis: int
    rows_axis: int
    cols_axis: int
    flip_rows: bool
    flip_cols: bool
    row_spacing: float
    col_spacing: float
    count: int

    @property
    def aspect(self) -> float:
        """Height of a displayed pixel relative to its width (matplotlib's ``aspect``)."""
        return self.row_spacing / self.col_spacing

    def extract(self, array: np.ndarray, index: int) -> np.ndarray:
        """Slice ``index`` of ``array`` (``[k, j, i]`` or ``[k, j, i, c]``) as a display-oriented 2D view."""
        if not 0 <= index < self.count:
            raise IndexError(f"{self.view} slice {index} is outside 0..{self.count - 1}")
        plane = np.take(array, index, axis=self.axis)
        if self.rows_axis > self.cols_axis:
            plane = np.swapaxes(plane, 0, 1)
        if self.flip_rows:
            plane = plane[::-1]
        if self.flip_cols:
            plane = plane[:, ::-1]
        return plane

    def slice_profile(self, mask: np.ndarray) -> np.ndarray:
        """Number of non-zero voxels of ``mask`` (``[k, j, i]``) on each slice of this plane."""
        other = tuple(a for a in range(3) if a != self.axis)
        return np.count_nonzero(mask, axis=other)


def plane_for(volume: Volume, view: str) -> Plane:
    """The :class:`Plane` that shows ``volume`` in ``view`` in radiological orientation."""
    if view not in SLICE_AXES:
        raise ValueError(f"unknown view {view!r}; use one of {', '.join(SLICE_AXES)}")
    axis = volume.axis_for(view)
    a, b = (x for x in range(3) if x != axis)
    right, down = (np.asarray(v) for v in SCREEN_DIRECTIONS[view])

    def direction(array_axis: int) -> np.ndarray:
        return volume.direction[:, 2 - array_axis]  # array axis 0/1/2 is ijk axis k/j/i

    straight = abs(direction(a) @ down) + abs(direction(b) @ right)
    swapped = abs(direction(b) @ down) + abs(direction(a) @ right)
    rows, cols = (a, b) if straight >= swapped else (b, a)
    return Plane(
        view=view,
        axis=axis,
        rows_axis=rows,
        cols_axis=cols,
        flip_rows=bool(direction(rows) @ down < 0),
        flip_cols=bool(direction(cols) @ right < 0),
        row_spacing=float(volume.spacing[2 - rows]),
        col_spacing=float(volume.spacing[2 - cols]),
        count=int(volume.shape[axis]),
    )
