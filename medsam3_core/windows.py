"""Intensity windows: CT presets, the one parser of a window setting, and the normaliser that applies the window
chosen for a volume. Plain numpy (no torch), so every front-end can check a window before any work starts and the
viewer and the overlay writer show a scan exactly as the model sees it.

A window is given as ``None``/``"auto"`` (the DICOM window, else the modality default), a preset name from
:data:`CT_WINDOWS`, ``"centre,width"`` text, or a ``(centre, width)`` pair. :func:`normalize_window` turns any of
these into ``None``, a preset name or a ``(centre, width)`` tuple once, at the edge
(:class:`~medsam3_core.segmenter.SegmentOptions`); the engine then only looks the value up.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

from medsam3_core.errors import InputError, SettingError
from medsam3_core.io.geometry import Volume
from medsam3_core.io.modality import hounsfield_evidence

__all__ = [
    "CT_WINDOWS", "PERCENTILES", "Window", "IntensityNormalizer", "parse_window", "normalize_window", "window_name",
]

#: CT window presets, ``name -> (centre, width)`` in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft-tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

Window = Union[None, str, tuple[float, float]]

#: Robust intensity range for modalities without a physical scale (MR, PET, ultrasound, unknown grey).
PERCENTILES: tuple[float, float] = (0.5, 99.5)

# Above this many voxels the percentiles are estimated from an evenly strided subsample; on a 512×512×600 CT the
# exact np.percentile takes seconds and the estimate differs by far less than one grey level of the output.
_PERCENTILE_SAMPLE = 8_000_000


def _is_auto(window: Any) -> bool:
    return window is None or (isinstance(window, str) and window.strip().lower() in ("", "auto"))


def parse_window(window: Any) -> tuple[float, float]:
    """``(centre, width)`` from a preset name, ``"C,W"`` text or a pair of numbers.

    Raises:
        SettingError: (``field="window"``) an unknown name, not two numbers, or a width that is not positive.
    """
    if isinstance(window, str):
        text = window.strip().lower()
        if text in CT_WINDOWS:
            return CT_WINDOWS[text]
        parts = [p for p in re.split(r"[,\s]+", text) if p]
        if len(parts) != 2:
            raise SettingError(
                f"Unknown window {window!r}; use one of {', '.join(CT_WINDOWS)}, or 'centre,width' such as '40,400'.",
                field="window",
            )
        try:
            centre, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise SettingError(
                f"Window {window!r} is not two numbers 'centre,width' such as '40,400'.", field="window"
            ) from None
    else:
        try:
            centre, width = (float(v) for v in window)
        except (TypeError, ValueError):
            raise SettingError(
                f"Window must be a preset name or (centre, width), got {window!r}.", field="window"
            ) from None
    if not (math.isfinite(centre) and math.isfinite(width)) or width <= 0:
        raise SettingError(
            f"Window width must be a positive number, got centre={centre:g}, width={width:g}.", field="window"
        )
    return centre, width


def normalize_window(window: Any) -> Window:
    """``None`` for automatic, the preset's name for a preset, else ``(centre, width)`` (checked)."""
    if _is_auto(window):
        return None
    if isinstance(window, str) and window.strip().lower() in CT_WINDOWS:
        return window.strip().lower()
    return parse_window(window)


def window_name(window: Window) -> str:
    """The preset's name, or ``"override"`` for an explicit ``(centre, width)``."""
    text = window.strip().lower() if isinstance(window, str) else ""
    return text if text in CT_WINDOWS else "override"


@dataclass(frozen=True)
class IntensityNormalizer:
    """Maps raw intensities linearly to ``[0, 1]``: ``clip((x - low) / (high - low), 0, 1)``.

    Build it with :meth:`for_volume`, which picks ``low``/``high`` once for the whole volume. ``description`` says
    in words which rule was applied; reports show it so a user can tell why a segmentation looks as it does.
    ``inferred`` is set when the rule rests on a guess the user should hear about (an untagged scan read as CT
    because its values look like Hounsfield units): the sentence for the run's warnings.
    """

    low: float
    high: float
    description: str
    inferred: str = ""

    @classmethod
    def for_volume(cls, volume: Volume, window: Window = None) -> "IntensityNormalizer":
        """Choose the intensity range for ``volume``.

        Precedence: an explicit ``window`` (``(centre, width)``, ``"C,W"`` or a :data:`CT_WINDOWS` preset name) >
        the DICOM window in ``volume.metadata["window"]`` > the modality default (CT: soft-tissue window; 8-bit RGB:
        ``/255``; anything else: the 0.5th–99.5th percentiles of the whole volume). A volume without modality whose
        values look like Hounsfield units (:mod:`medsam3_core.io.modality`) gets the CT default, and says why.

        Raises:
            InputError: unknown preset name, malformed ``"C,W"`` text, or a width that is not positive.
        """
        if window is not None and not (isinstance(window, str) and window.strip().lower() in ("", "auto")):
            centre, width = parse_window(window)
            return cls._from_window(centre, width, f"window {window_name(window)} (C={centre:g}, W={width:g})")
        dicom = _dicom_window(volume.metadata.get("window"))
        if dicom is not None:
            return cls._from_window(*dicom, f"DICOM window (C={dicom[0]:g}, W={dicom[1]:g})")
        modality = (volume.modality or "").upper()
        inferred = ""
        if not modality and not volume.is_rgb:
            evidence = hounsfield_evidence(volume.array)
            inferred = f"Read as CT: {evidence.reason()}." if evidence.is_ct else ""
        if (modality == "CT" or inferred) and not volume.is_rgb:
            centre, width = CT_WINDOWS["soft-tissue"]
            text = f"CT soft-tissue window (C={centre:g}, W={width:g})" + (" for a scan read as CT" if inferred else "")
            return cls(centre - width / 2.0, centre + width / 2.0, text, inferred)
        if volume.is_rgb and volume.array.dtype == np.uint8:
            return cls(0.0, 255.0, "8-bit colour, scaled by 1/255")
        low, high = _robust_range(volume.array)
        return cls(low, high, f"percentiles {PERCENTILES[0]:g}-{PERCENTILES[1]:g} of the volume ({low:g} to {high:g})")

    @classmethod
    def _from_window(cls, centre: float, width: float, description: str) -> "IntensityNormalizer":
        return cls(centre - width / 2.0, centre + width / 2.0, description)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """``values`` (any shape) as float32 in ``[0, 1]``.

        A constant volume maps to zeros, and NaN (some NIfTI files mark "outside the scan" with it) to 0, i.e.
        black, like the letterbox padding: a NaN reaching the ViT would turn every output into NaN.
        """
        span = self.high - self.low
        out = np.asarray(values, dtype=np.float32) - np.float32(self.low)
        if span <= 0:
            return np.zeros_like(out)
        out *= np.float32(1.0 / span)
        np.clip(out, 0.0, 1.0, out=out)
        return np.nan_to_num(out, copy=False, nan=0.0)


def _dicom_window(value: Any) -> Optional[tuple[float, float]]:
    """The first ``(centre, width)`` of a DICOM window as a reader may store it, or ``None`` if absent/unusable.

    Accepted forms: ``(c, w)``, ``[(c1, w1), (c2, w2), …]`` (multi-valued WindowCenter/Width; the first is the
    default view) and ``{"center": c, "width": w}``. An unusable header window is ignored rather than fatal, since the
    modality default still gives a sensible image.
    """
    if value is None:
        return None
    if isinstance(value, dict):
        value = (value.get("center", value.get("centre")), value.get("width"))
    try:
        pair = list(value)
        if pair and isinstance(pair[0], (list, tuple, np.ndarray)):
            pair = list(pair[0])
        centre, width = float(pair[0]), float(pair[1])
    except (TypeError, ValueError, IndexError):
        return None
    if not (math.isfinite(centre) and math.isfinite(width)) or width <= 0:
        return None
    return centre, width


def _robust_range(array: np.ndarray) -> tuple[float, float]:
    flat = np.asarray(array).reshape(-1)
    if flat.size > _PERCENTILE_SAMPLE:
        flat = flat[:: math.ceil(flat.size / _PERCENTILE_SAMPLE)]
    flat = flat[np.isfinite(flat)] if np.issubdtype(flat.dtype, np.floating) else flat
    if flat.size == 0:
        raise InputError("The image has no finite intensity values.")
    low, high = np.percentile(flat, PERCENTILES)
    return float(low), float(high)
