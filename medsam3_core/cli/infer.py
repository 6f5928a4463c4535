"""``python -m medsam3_core.volume infer INPUT PROMPT [PROMPT ...]`` — segment a scan by text from the command line.

This module is only argument parsing and presentation: reading goes through :mod:`medsam3_core.io.reading`, inference
through the :class:`~medsam3_core.segmenter.Segmenter` interface (local engine or remote server, chosen by
``--server``), and writing through :mod:`medsam3_core.io.export`, so the server and the Slicer module share every step
with the CLI.

Exit codes: 0 success, 2 user error (one line on stderr, nothing written), 3 cancelled (Ctrl-C; nothing written).
``--progress json`` prints one JSON object per line on stdout for programs that drive the CLI (the Slicer module).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional, Sequence

from medsam3_core.cli.options import add_common_arguments, progress_style, segment_options
from medsam3_core.cli.segment_case import OutputPlan, segment_and_write
from medsam3_core.errors import Cancelled, MedSam3Error
from medsam3_core.progress import CancelToken
from medsam3_core.signals import cancel_on_signals

__all__ = ["add_arguments", "run", "main", "EXIT_OK", "EXIT_USER_ERROR", "EXIT_CANCELLED"]

EXIT_OK, EXIT_BUG, EXIT_USER_ERROR, EXIT_CANCELLED = 0, 1, 2, 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``infer`` (shared by ``python -m medsam3_core.volume infer`` and ``medsam3 infer``)."""
    parser.add_argument("input", help="NIfTI/NRRD/MHA file, DICOM series folder, PNG/JPEG/TIFF image, or 'demo'")
    parser.add_argument("prompts", nargs="+", metavar="PROMPT", help="concepts to segment, e.g. kidney liver")
    parser.add_argument("-o", "--output", default="medsam3_output", help="output folder (default: %(default)s)")
    parser.add_argument("--series", default=None, metavar="UID", help="DICOM SeriesInstanceUID to read")
    add_common_arguments(parser)


#: The option of each setting a core error can name (``MedSam3Error.field``), so the user reads the flag to change.
FLAGS = {"threshold": "--threshold", "window": "--window", "slice_axis": "--slice-axis", "mode": "--mode",
         "batch_size": "--batch-size", "memory_size": "--memory-size", "device": "--device",
         "clip_length": "--clip-length", "clip_fusion": "--clip-fusion"}


def user_message(err: MedSam3Error) -> str:
    """The core's message, plus the command-line option to change when the error is about one setting."""
    flag = FLAGS.get(getattr(err, "field", None) or "")
    return f"{err} (option {flag})" if flag else str(err)


class _Progress:
    """Renders (stage, fraction) events as a tqdm bar on stderr, JSON lines on stdout, or nothing."""

    def __init__(self, style: str) -> None:
        self.style = style
        self._bar = None
        self._stage = None

    def __call__(self, stage: str, fraction: float) -> None:
        if self.style == "json":
            emit({"event": "progress", "stage": stage, "fraction": round(fraction, 4)})
        elif self.style == "bar":
            from tqdm import tqdm

            if stage != self._stage:
                self.close()
                self._stage = stage
                self._bar = tqdm(total=1000, desc=f"{stage:>7}", file=sys.stderr, leave=False,
                                 bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}")
            self._bar.n = int(fraction * 1000)
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def emit(event: dict[str, Any]) -> None:
    """One JSON line on stdout (the machine-readable protocol used by the Slicer module)."""
    print(json.dumps(event), flush=True)


def _segment_and_write(args: argparse.Namespace, cancel: CancelToken, progress: _Progress,
                       loading: Callable[[], ContextManager[None]] = contextlib.nullcontext) -> dict[str, Any]:
    """Read, segment, write. ``loading()`` wraps the model load (a region a signal may abort at once)."""
    from medsam3_core.segmenters.opening import open_input, open_segmenter
    from medsam3_core.io.outputs import check_output_targets
    from medsam3_core.prompts import resolve_prompts

    options = segment_options(args)
    resolutions = resolve_prompts(args.prompts, args.synonyms)
    plan = OutputPlan(Path(args.output), args.format, args.per_segment, args.confidence_map,
                      Path(args.dicom_seg) if args.dicom_seg else None, Path(args.png) if args.png else None,
                      args.synonyms)
    plan.check()
    check_output_targets(args.output, dicom_seg=args.dicom_seg, png=args.png)  # before any model is loaded
    t0 = time.perf_counter()
    volume = open_input(args.input, series_uid=args.series, modality=args.modality, frame=args.frame,
                        progress=progress, cancel=cancel, max_voxels=args.max_voxels)
    read_s = time.perf_counter() - t0
    plan.check_input(volume)

    with loading():
        segmenter = open_segmenter(args.model, args.device, args.server, args.api_key, progress)
    return segment_and_write(segmenter, volume, resolutions, options, plan, input_text=args.input,
                             read_seconds=read_s, progress=progress, cancel=cancel)


def _print_summary(outcome: dict[str, Any]) -> None:
    result = outcome["result"]
    print(f"{'label':>5}  {'prompt':<24} {'voxels':>9} {'mL':>9} {'score':>6}  slices")
    for s in result.segments:
        rng = f"{s.slice_range[0]}-{s.slice_range[1]}" if s.slice_range else "-"
        print(f"{s.label:>5}  {s.prompt[:24]:<24} {s.voxels:>9d} {s.volume_ml:>9.2f} {s.score:>6.3f}  {rng}")
    for w in outcome["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"model: {result.model}; total {result.seconds:.1f} s")
    print(f"wrote {outcome['written']['labels']} and {outcome['written']['report']}")


def run(args: argparse.Namespace) -> int:
    """Run ``infer``; returns the process exit code (never raises for user errors)."""
    progress = _Progress(progress_style(args))
    try:
        with cancel_on_signals() as signals:  # Ctrl-C, SIGTERM, SIGHUP: stop cleanly, exit 3, nothing written
            outcome = _segment_and_write(args, signals.token, progress, loading=signals.immediately)
    except Cancelled as err:
        return _fail(args, progress, str(err), EXIT_CANCELLED)
    except KeyboardInterrupt:
        return _fail(args, progress, "Interrupted; nothing was written.", EXIT_CANCELLED)
    except MedSam3Error as err:
        return _fail(args, progress, user_message(err), EXIT_USER_ERROR)
    finally:
        progress.close()
    if args.progress == "json":
        emit({"event": "done", "output": str(Path(args.output).resolve()),
              "report": outcome["result"].to_report()})
    elif not args.quiet:
        _print_summary(outcome)
    return EXIT_OK


def _fail(args: argparse.Namespace, progress: _Progress, message: str, code: int) -> int:
    progress.close()
    if args.progress == "json":
        emit({"event": "cancelled" if code == EXIT_CANCELLED else "error", "message": message})
    print(f"error: {message}" if code == EXIT_USER_ERROR else message, file=sys.stderr)
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    from medsam3_core.cli.parsing import OneLineErrorParser

    parser = OneLineErrorParser(prog="python -m medsam3_core.volume", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("infer", help="segment a scan or image by text prompts"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
