"""Opening inputs and segmenters by the names users type — shared by the CLI, the viewer and the server.

``open_input("demo")`` is the bundled phantom (a CT, although NIfTI carries no modality), anything else goes to
:func:`medsam3_core.io.reading.read_volume`. ``open_segmenter`` returns the local engine or, with ``server``, the HTTP
client; both implement :class:`~medsam3_core.segmenter.Segmenter`, so callers never care which one they got.
"""

from __future__ import annotations

import os
from typing import Optional

from medsam3_core.io.geometry import Volume
from medsam3_core.progress import CancelToken, ProgressCallback, report
from medsam3_core.segmenter import Segmenter

__all__ = ["DEMO_INPUT", "open_input", "open_segmenter"]

DEMO_INPUT = "demo"


def open_input(
    text: str,
    *,
    series_uid: Optional[str] = None,
    modality: Optional[str] = None,
    frame: Optional[int] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    max_voxels: Optional[int] = None,
) -> Volume:
    """Read a file, a DICOM folder, or ``"demo"`` (the bundled CT phantom); ``max_voxels`` as in ``read_volume``."""
    from medsam3_core.io.reading import read_volume

    if text == DEMO_INPUT:
        from medsam3_core.phantom import demo_paths

        text, modality = str(demo_paths().ct), modality or "CT"
    return read_volume(text, series_uid=series_uid, modality=modality, frame=frame, progress=progress, cancel=cancel,
                       max_voxels=max_voxels)


def open_segmenter(
    model: str = "demo",
    device: str = "auto",
    server: Optional[str] = None,
    api_key: Optional[str] = None,
    progress: Optional[ProgressCallback] = None,
) -> Segmenter:
    """The remote client when ``server`` is given (key from ``api_key`` or ``$MEDSAM3_API_KEY``), else the local
    engine with ``model`` loaded on ``device`` (progress stage ``"model"``)."""
    if server:
        from medsam3_core.server.client import RemoteSegmenter

        return RemoteSegmenter(server, api_key=api_key or os.environ.get("MEDSAM3_API_KEY"))
    from medsam3_core.segmenters.local import LocalSegmenter
    from medsam3_core.model.bundle import load_model

    report(progress, "model", 0.0)
    bundle = load_model(model, device=device)
    report(progress, "model", 1.0)
    return LocalSegmenter(bundle)
