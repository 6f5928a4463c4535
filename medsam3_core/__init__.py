"""Medical SAM3 headless core: volumes in, text-prompted SAM3 segmentation out.

One call segments a scan::

    from medsam3_core import segment

    result = segment("scan.nii.gz", ["kidney", "liver"])          # the bundled demo model, track mode
    result.labelmap                                                # a Volume on exactly the input grid
    result.to_report()                                             # what report.json holds

Front-ends (CLI, HTTP server, 3D Slicer module) are thin layers over this package; it never imports Slicer or Qt.
The names below are loaded on first use (module ``__getattr__``), so ``import medsam3_core`` stays free of torch:
the Slicer module imports the package before torch is installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["segment", "LocalSegmenter", "RemoteSegmenter", "read_volume", "Volume", "SegmentOptions"]

#: Public name -> the module that defines it.
_EXPORTS = {
    "segment": "medsam3_core.segmenters.predict",
    "LocalSegmenter": "medsam3_core.segmenters.local",
    "RemoteSegmenter": "medsam3_core.server.client",
    "read_volume": "medsam3_core.io.reading",
    "Volume": "medsam3_core.io.geometry",
    "SegmentOptions": "medsam3_core.segmenter",
}

if TYPE_CHECKING:  # for type checkers and editors; at run time the names load lazily
    from medsam3_core.io.geometry import Volume
    from medsam3_core.io.reading import read_volume
    from medsam3_core.segmenter import SegmentOptions
    from medsam3_core.segmenters.local import LocalSegmenter
    from medsam3_core.segmenters.predict import segment
    from medsam3_core.server.client import RemoteSegmenter


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'medsam3_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
