"""The :class:`Volume` type: a voxel array plus the geometry that places it in patient space.

Conventions (one place, used everywhere):

* ``array`` is indexed ``[k, j, i]`` (slowest to fastest: slice, row, column) exactly like
  ``SimpleITK.GetArrayFromImage``; an RGB 2D image is ``(1, rows, cols, 3)``.
* ``spacing`` is ``(di, dj, dk)`` in mm, ``origin`` is the physical point of voxel (0, 0, 0) in **LPS** mm, and
  ``direction`` is a 3×3 matrix whose *columns* are the unit vectors of the i, j, k axes in LPS (ITK's convention;
  ``SimpleITK.Image.GetDirection()`` reshaped to 3×3 row-major).
* Slicer works in RAS. :meth:`Volume.ijk_to_ras` / :meth:`Volume.from_ijk_to_ras` are the only LPS⇄RAS conversions
  in the project.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

import numpy as np

from medsam3_core.errors import InputError

__all__ = ["Volume", "LPS_TO_RAS"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Volume:
    """A 3D (or single-slice 2D) image with full geometry.

    Attributes:
        array: ``(K, J, I)`` scalars or ``(1, J, I, 3)`` RGB.
        spacing: voxel size along i, j, k in mm.
        origin: LPS position of voxel (0, 0, 0) in mm.
        direction: 3×3, columns = LPS unit vectors of the i, j, k axes.
        modality: ``"CT"``, ``"MR"``, ``"RGB"`` … or ``None`` when unknown (a hint for windowing).
        metadata: free-form facts from the reader (DICOM window centre/width, series UID, source path, …).
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: Optional[str] = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array)
        if self.array.ndim == 2:
            self.array = self.array[None]
        if self.array.ndim not in (3, 4) or (self.array.ndim == 4 and self.array.shape[-1] not in (3, 4)):
            raise InputError(
                f"Expected a 3D volume or a 2D image, got an array of shape {self.array.shape}. "
                "For 4D data choose one frame first."
            )
        self.spacing = tuple(float(s) for s in self.spacing)  # type: ignore[assignment]
        self.origin = tuple(float(o) for o in self.origin)  # type: ignore[assignment]
        self.direction = np.asarray(self.direction, dtype=float).reshape(3, 3)
        if len(self.spacing) != 3 or len(self.origin) != 3:
            raise InputError("Spacing and origin must have three components (i, j, k).")
        if any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise InputError(f"Voxel spacing must be positive, got {self.spacing}.")

    # -- shape -------------------------------------------------------------------------------------------------
    @property
    def is_rgb(self) -> bool:
        return self.array.ndim == 4

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(K, J, I)`` voxel counts, ignoring a colour axis."""
        return tuple(int(n) for n in self.array.shape[:3])  # type: ignore[return-value]

    # -- geometry ----------------------------------------------------------------------------------------------
    def ijk_to_lps(self) -> np.ndarray:
        """4×4 matrix mapping homogeneous ``(i, j, k, 1)`` to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def ijk_to_ras(self) -> np.ndarray:
        """4×4 matrix mapping homogeneous ``(i, j, k, 1)`` to RAS mm (Slicer's ``GetIJKToRASMatrix``)."""
        m = self.ijk_to_lps()
        m[:3, :] = LPS_TO_RAS @ m[:3, :]
        return m

    @classmethod
    def from_ijk_to_ras(
        cls, array: np.ndarray, ijk_to_ras: np.ndarray, modality: Optional[str] = None, **metadata: Any
    ) -> "Volume":
        """Build a volume from a ``[k, j, i]`` array and a Slicer-style IJK→RAS matrix."""
        m = np.asarray(ijk_to_ras, dtype=float).reshape(4, 4)
        lps = LPS_TO_RAS @ m[:3, :]
        spacing = np.linalg.norm(lps[:, :3], axis=0)
        if np.any(spacing <= 0):
            raise InputError("The IJK-to-RAS matrix is singular.")
        return cls(array, tuple(spacing), tuple(lps[:, 3]), lps[:, :3] / spacing, modality, dict(metadata))

    def with_array(self, array: np.ndarray, **changes: Any) -> "Volume":
        """Same geometry, new voxels (e.g. a label map); shape ``(K, J, I)`` must match."""
        array = np.asarray(array)
        if array.shape[:3] != self.shape:
            raise ValueError(f"array shape {array.shape} does not match the volume grid {self.shape}")
        return replace(self, array=array, metadata=dict(self.metadata), **changes)

    def same_geometry(self, other: "Volume", atol: float = 1e-4) -> bool:
        """True when ``other`` lies on exactly this voxel grid."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def axis_for(self, anatomical: str) -> int:
        """Array axis (0=k, 1=j, 2=i) whose voxel direction is closest to the anatomical axis.

        ``"axial"`` → superior-inferior (LPS z), ``"coronal"`` → anterior-posterior (y), ``"sagittal"`` →
        left-right (x). Chosen from the direction matrix, not from the array layout, so a sagittally acquired MR
        is still sliced axially when asked to.
        """
        target = {"axial": 2, "coronal": 1, "sagittal": 0}.get(anatomical)
        if target is None:
            raise InputError(f"Unknown slice axis {anatomical!r}; use axial, coronal or sagittal.")
        ijk_axis = int(np.argmax(np.abs(self.direction[target, :])))  # 0=i, 1=j, 2=k
        return 2 - ijk_axis

    def physical_points(self, ijk: Sequence[Sequence[float]]) -> np.ndarray:
        """LPS coordinates of ``(i, j, k)`` voxel indices (N×3)."""
        ijk = np.asarray(ijk, dtype=float).reshape(-1, 3)
        return (self.ijk_to_lps() @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0
