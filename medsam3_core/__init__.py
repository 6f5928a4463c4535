"""Medical SAM3 headless core: volumes in, text-prompted SAM3 segmentation out.

Front-ends (CLI, HTTP server, 3D Slicer module) are thin layers over this package; it never imports Slicer or Qt.
"""

__version__ = "0.1.0"
