"""Recognising a CT scan that carries no modality tag, from its intensities alone.

NIfTI, NRRD and MetaImage files do not record the modality, yet most of them holding CT store Hounsfield units (HU),
a physical scale: air is -1000 HU, water 0 HU, fat about -100 HU, soft tissue 20-80 HU and bone several hundred.
Such a scan must be shown and segmented through the CT soft-tissue window. Windowing it by percentiles instead
spends most grey levels on air and bone, so the organs the model knows look nothing like what it was trained on.

The rule (:func:`hounsfield_evidence`), applied only when the modality is unknown:

1. **Air**: at least :data:`MIN_AIR_FRACTION` of the voxels lie in the air band ``[-1100, -900]`` HU. Every CT of
   a body part has air around the patient; an MR, PET or ultrasound image (non-negative, or z-scored to a few
   units) never puts a twentieth of its voxels near -1000.
2. **Water-like tissue**: among the voxels above -500 HU (leaving out air, lung and the padding some scanners
   write outside the field of view, -1024 to -3024), the commonest 10-HU bin lies in :data:`TISSUE_MODE_RANGE`
   (-200 to 200 HU): fat, water and soft tissue, which dominate a body or head. A signed image with a big negative
   mass elsewhere (say a background of -1000 and an object at 3000) fails here.

Both must hold. CT stored without its rescale (air at 0, water near 1024) is not recognised; pass
``--modality CT`` and a window for it. An explicit modality (``--modality``, a DICOM tag) always wins, since this
rule is only consulted when none is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["AIR_BAND", "MIN_AIR_FRACTION", "TISSUE_MODE_RANGE", "HounsfieldEvidence", "hounsfield_evidence"]

#: Hounsfield band counted as air (air is -1000 HU; noise and calibration spread it by tens of HU).
AIR_BAND: tuple[float, float] = (-1100.0, -900.0)
#: Share of voxels in :data:`AIR_BAND` needed before a scan can be read as CT.
MIN_AIR_FRACTION = 0.05
#: Where the commonest 10-HU bin above -500 HU must lie: fat (-150 to -50) to soft tissue (about 80), with margin.
TISSUE_MODE_RANGE: tuple[float, float] = (-200.0, 200.0)

_TISSUE_FLOOR = -500.0
_BIN_HU = 10.0
# The decision needs a histogram, not every voxel: an evenly strided subsample of this size changes the air share
# by far less than a percent on any real scan, and keeps the check well under a tenth of a second.
_SAMPLE = 2_000_000


@dataclass(frozen=True)
class HounsfieldEvidence:
    """What the histogram says: the share of air voxels and the commonest value above -500 HU.

    ``is_ct`` is the verdict; :meth:`reason` says it in words for reports, e.g. ``"no modality in the file, but
    its values look like Hounsfield units (38% of voxels are air at -1100 to -900, the commonest tissue value is
    near 20)"``.
    """

    air_fraction: float
    tissue_mode: Optional[float]

    @property
    def is_ct(self) -> bool:
        low, high = TISSUE_MODE_RANGE
        return (
            self.air_fraction >= MIN_AIR_FRACTION and self.tissue_mode is not None and low <= self.tissue_mode <= high
        )

    def reason(self) -> str:
        mode = "none" if self.tissue_mode is None else f"near {self.tissue_mode:g}"
        verdict = "look like Hounsfield units" if self.is_ct else "do not look like Hounsfield units"
        return (
            f"no modality in the file, and its values {verdict} ({self.air_fraction:.0%} of voxels are air at "
            f"{AIR_BAND[0]:g} to {AIR_BAND[1]:g}, the commonest tissue value above {_TISSUE_FLOOR:g} is {mode})"
        )


def hounsfield_evidence(array: np.ndarray) -> HounsfieldEvidence:
    """Measure ``array`` (any shape, any real dtype; NaN ignored) against the rule of this module."""
    flat = np.asarray(array).reshape(-1)
    if flat.size > _SAMPLE:
        flat = flat[:: math.ceil(flat.size / _SAMPLE)]
    flat = flat.astype(np.float64, copy=False)
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return HounsfieldEvidence(0.0, None)
    air = float(np.count_nonzero((flat >= AIR_BAND[0]) & (flat <= AIR_BAND[1]))) / flat.size
    tissue = flat[flat > _TISSUE_FLOOR]
    if tissue.size == 0:
        return HounsfieldEvidence(air, None)
    # Bins of 10 HU aligned on multiples of 10 HU, so water (0) and air (-1000) sit in the middle of a bin's range.
    bins = np.floor((tissue + _BIN_HU / 2) / _BIN_HU).astype(np.int64)
    values, counts = np.unique(bins, return_counts=True)
    mode = float(values[int(np.argmax(counts))] * _BIN_HU)
    return HounsfieldEvidence(air, mode)
