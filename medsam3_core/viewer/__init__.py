"""Standalone desktop viewer (``medsam3 view``): slice views, window/level, text prompts, overlay and export.

Only :mod:`.planes` is Qt-free (the CLI's overlay pictures use it too); the other modules need the ``gui`` extra
(qtpy + PyQt5) and are imported only when the viewer starts.
"""
