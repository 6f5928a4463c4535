"""CT window presets and the one parser of a window setting (torch-free, so every front-end can check a window
before any work starts).

A window is given as ``None``/``"auto"`` (the DICOM window, else the modality default), a preset name from
:data:`CT_WINDOWS`, ``"centre,width"`` text, or a ``(centre, width)`` pair. :func:`normalize_window` turns any of
these into ``None``, a preset name or a ``(centre, width)`` tuple once, at the edge
(:class:`~medsam3_core.segmenter.SegmentOptions`); the engine then only looks the value up.
"""

from __future__ import annotations

import math
import re
from typing import Any, Union

from medsam3_core.errors import SettingError

__all__ = ["CT_WINDOWS", "Window", "parse_window", "normalize_window", "window_name"]

#: CT window presets, ``name -> (centre, width)`` in Hounsfield units.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft-tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

Window = Union[None, str, tuple[float, float]]


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
