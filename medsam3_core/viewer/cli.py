"""``medsam3 view [SCAN] [-p PROMPT ...]`` — open the standalone viewer (needs the ``gui`` extra: qtpy + PyQt5).

``--screenshot FILE`` renders the window without a user (any Qt platform, ``offscreen`` included), runs the given
prompts first, saves the picture and exits; the README's screenshot is made this way, so it can be reproduced.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from medsam3_core.segmenters.opening import open_input, open_segmenter
from medsam3_core.errors import MedSam3Error
from medsam3_core.progress import ProgressCallback
from medsam3_core.segmenter import MODES, Segmenter, SegmentOptions

__all__ = ["add_arguments", "run", "segmenter_factory"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="?", default=None,
                        help="NIfTI/NRRD/MHA file, DICOM folder, PNG/JPEG image, or 'demo' (default: empty window)")
    parser.add_argument("-p", "--prompt", action="append", default=[], metavar="PROMPT",
                        help="prefill a prompt (repeatable)")
    parser.add_argument("--model", default="demo", help="'demo', a model folder or checkpoint (default: demo)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--mode", choices=MODES, default="track", help="track (default) or detect")
    parser.add_argument("--threshold", type=float, default=None,
                        help="detection score threshold (default: the model's recommended threshold, 0.5 if it "
                             "states none)")
    parser.add_argument("--synonyms", default=None, metavar="JSON", help="extra synonym table for prompts")
    parser.add_argument("--series", default=None, metavar="UID", help="DICOM SeriesInstanceUID to open")
    parser.add_argument("--modality", default=None,
                        help="modality hint for windowing when the file has none (CT, MR, ...; 'demo' is CT)")
    parser.add_argument("--server", default=None, metavar="URL", help="segment on a remote medsam3 server")
    parser.add_argument("--api-key", default=None, help="API key of the remote server (or MEDSAM3_API_KEY)")
    parser.add_argument("--screenshot", default=None, metavar="PNG",
                        help="segment the prompts, save a picture of the window to PNG and exit")
    parser.add_argument("--size", default="1280x800", metavar="WxH", help="window size (default: 1280x800)")


def segmenter_factory(model: str = "demo", device: str = "auto", server: Optional[str] = None,
                      api_key: Optional[str] = None):
    """A callable that builds the segmenter on first use (loading weights takes seconds; the GUI must not wait)."""

    def make(progress: Optional[ProgressCallback]) -> Segmenter:
        return open_segmenter(model, device, server, api_key, progress)

    return make


def _read_input(text: Optional[str], series: Optional[str], modality: Optional[str]):
    return None if text is None else open_input(text, series_uid=series, modality=modality)


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise MedSam3Error(f"--size {text!r}: expected WIDTHxHEIGHT such as 1280x800.") from None
    return width, height


def _screenshot(app, window, path: Path, segment: bool) -> int:
    """Optionally segment, wait for the worker with the event loop running, then save the window's picture."""
    from qtpy.QtCore import QEventLoop, QTimer

    from medsam3_core.viewer.window import IDLE

    if segment and window.start_segmentation():
        loop = QEventLoop()
        timer = QTimer()
        timer.timeout.connect(lambda: loop.quit() if window.state == IDLE else None)
        timer.start(100)
        loop.exec_()
        timer.stop()
    app.processEvents()
    path.parent.mkdir(parents=True, exist_ok=True)
    if not window.grab().save(str(path), "PNG"):
        raise MedSam3Error(f"Could not write the screenshot {path}.")
    print(f"wrote {path}")
    return 2 if window.last_error else 0


def run(args: argparse.Namespace) -> int:
    """Open the viewer; returns the process exit code (2 for user errors, with one line on stderr)."""
    try:
        from qtpy.QtWidgets import QApplication

        from medsam3_core.viewer.window import ViewerWindow
    except ImportError as err:  # qtpy raises an ImportError subclass when no Qt binding is installed
        print(f"error: the viewer needs Qt for Python ({err}); install it with: pip install 'medsam3[gui]'",
              file=sys.stderr)
        return 2
    try:
        width, height = _size(args.size)
        options = SegmentOptions(threshold=args.threshold, mode=args.mode)
        volume = _read_input(args.input, args.series, args.modality)
    except MedSam3Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    app = QApplication.instance() or QApplication(sys.argv[:1])
    window = ViewerWindow(segmenter_factory(args.model, args.device, args.server, args.api_key), volume,
                          prompts=args.prompt, synonyms_file=args.synonyms, options=options)
    window.resize(width, height)
    window.show()
    if args.screenshot:
        try:
            code = _screenshot(app, window, Path(args.screenshot), segment=bool(args.prompt and volume is not None))
        except MedSam3Error as err:
            print(f"error: {err}", file=sys.stderr)
            code = 2
        if window.last_error:
            print(f"error: {window.last_error}", file=sys.stderr)
        window.close()
        return code
    return int(app.exec_())
