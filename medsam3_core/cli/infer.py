"""``python -m medsam3_core.volume infer INPUT PROMPT [PROMPT ...]`` — segment a scan by text from the command line.

This module is only argument parsing and presentation: reading goes through :mod:`medsam3_core.io.reading`, inference through
the :class:`~medsam3_core.segmenter.Segmenter` interface (local engine or remote server, chosen by ``--server``), and
writing through :mod:`medsam3_core.io.export`, so the server and the Slicer module share every step with the CLI.

Exit codes: 0 success, 2 user error (one line on stderr, nothing written), 3 cancelled (Ctrl-C; nothing written).
``--progress json`` prints one JSON object per line on stdout for programs that drive the CLI (the Slicer module).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, ContextManager, Optional, Sequence

from medsam3_core.errors import Cancelled, InputError, MedSam3Error
from medsam3_core.progress import CancelToken
from medsam3_core.segmenter import MODES, SLICE_AXES, SegmentOptions
from medsam3_core.signals import cancel_on_signals

__all__ = ["add_arguments", "run", "main", "EXIT_OK", "EXIT_USER_ERROR", "EXIT_CANCELLED"]

EXIT_OK, EXIT_BUG, EXIT_USER_ERROR, EXIT_CANCELLED = 0, 1, 2, 3
OUTPUT_FORMATS = ("nii.gz", "nii", "nrrd", "mha", "png")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``infer`` (shared by ``python -m medsam3_core.volume infer`` and ``medsam3 infer``)."""
    parser.add_argument("input", help="NIfTI/NRRD/MHA file, DICOM series folder, PNG/JPEG/TIFF image, or 'demo'")
    parser.add_argument("prompts", nargs="+", metavar="PROMPT", help="concepts to segment, e.g. kidney liver")
    parser.add_argument("-o", "--output", default="medsam3_output", help="output folder (default: %(default)s)")
    parser.add_argument("--model", default="demo", help="'demo', a transformers model folder, a .safetensors or a "
                        "SAM3 / Medical SAM3 .pt checkpoint (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--mode", choices=MODES, default="track",
                        help="track: detector + memory tracker (default); detect: detector on every slice only")
    parser.add_argument("--threshold", type=float, default=None,
                        help="detection score threshold (default: the model's recommended threshold, 0.5 if it "
                             "states none)")
    parser.add_argument("--window", default=None,
                        help="CT window preset (soft-tissue, lung, bone, brain) or CENTRE,WIDTH; default: the DICOM "
                             "window, else soft-tissue for CT and robust percentiles otherwise")
    parser.add_argument("--slice-axis", choices=SLICE_AXES, default="axial", help="slicing direction (default: axial)")
    parser.add_argument("--modality", default=None, help="override the modality hint (CT, MR, ...)")
    parser.add_argument("--series", default=None, metavar="UID", help="DICOM SeriesInstanceUID to read")
    parser.add_argument("--frame", type=int, default=None, help="frame index of a 4D input")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="nii.gz",
                        help="label map format (png for 2D images only; default: nii.gz)")
    parser.add_argument("--per-segment", action="store_true", help="also write one binary mask per prompt")
    parser.add_argument("--confidence-map", action="store_true", help="also write a per-voxel confidence map")
    parser.add_argument("--cleanup", action="store_true", help="keep the largest 3D component per object, fill holes")
    parser.add_argument("--batch-size", type=int, default=4, help="slices per forward pass (default: 4)")
    parser.add_argument("--memory-size", type=int, default=7, help="tracker memory-bank frames (default: 7)")
    parser.add_argument("--synonyms", default=None, metavar="JSON", help="extra synonym table for prompt resolution")
    parser.add_argument("--png", default=None, metavar="DIR", help="write overlay pictures of a few slices to DIR")
    parser.add_argument("--dicom-seg", default=None, metavar="FILE", help="also write a DICOM SEG (DICOM input only)")
    parser.add_argument("--server", default=None, metavar="URL", help="run on a remote medsam3 server")
    parser.add_argument("--api-key", default=None, help="API key of the remote server (or MEDSAM3_API_KEY)")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="progress display: bar on stderr, json lines on stdout, or none")
    parser.add_argument("--quiet", action="store_true", help="no progress and no summary")


def _window_option(text: Optional[str]) -> Any:
    """``--window`` as ``SegmentOptions.window``, checked by the core's own parser before any work starts."""
    if text is None or text.strip().lower() in ("", "auto"):
        return None
    from medsam3_core.engine.preprocess import CT_WINDOWS, parse_window

    centre_width = parse_window(text)
    return text.strip().lower() if text.strip().lower() in CT_WINDOWS else centre_width


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
    from medsam3_core.io.export import write_outputs
    from medsam3_core.prompts import duplicate_concepts, resolve_prompts

    options = SegmentOptions(
        threshold=args.threshold, window=_window_option(args.window), slice_axis=args.slice_axis, mode=args.mode,
        batch_size=args.batch_size, cleanup=args.cleanup, memory_size=args.memory_size,
        confidence_map=args.confidence_map,
    )
    resolutions = resolve_prompts(args.prompts, args.synonyms)
    if args.dicom_seg and not str(args.dicom_seg).lower().endswith(".dcm"):
        raise InputError("--dicom-seg must name a .dcm file.")
    t0 = time.perf_counter()
    volume = open_input(args.input, series_uid=args.series, modality=args.modality, frame=args.frame,
                        progress=progress, cancel=cancel)
    read_s = time.perf_counter() - t0
    if args.dicom_seg and "dicom_files" not in volume.metadata:
        raise InputError("--dicom-seg needs a DICOM series as input.")

    with loading():
        segmenter = open_segmenter(args.model, args.device, args.server, args.api_key, progress)
    result = segmenter.segment(volume, [r.raw for r in resolutions], options, progress=progress, cancel=cancel,
                               concepts=[r.concept for r in resolutions])
    result.timings = {"read": read_s, **result.timings}
    for concept, raws in duplicate_concepts(resolutions).items():
        result.warnings.append(f"Prompts {', '.join(map(repr, raws))} all mean {concept!r}; each got its own label.")
    cancel.raise_if_cancelled()

    progress("write", 0.0)
    extra = {
        "input": {"path": str(volume.metadata.get("source", args.input)), "shape": list(volume.shape), "spacing": list(volume.spacing),
                  "origin": list(volume.origin), "direction": volume.direction.tolist(), "modality": volume.modality},
        "prompts": [r.to_dict() for r in resolutions],
        "input_warnings": list(volume.metadata.get("warnings", [])),
    }
    written = write_outputs(result, args.output, fmt=args.format, per_segment=args.per_segment,
                            confidence=args.confidence_map, extra_report=extra, cancel=cancel)
    try:
        if args.dicom_seg:
            from medsam3_core.io.dicom_seg import write_dicom_seg

            write_dicom_seg(result.labelmap, result.segments, volume, args.dicom_seg, model=result.model,
                            synonyms_file=args.synonyms)
            written["dicom_seg"] = Path(args.dicom_seg)
        if args.png:
            from medsam3_core.io.overlay import write_overlays

            written["png"] = Path(args.png)
            write_overlays(volume, result.labelmap, result.segments, args.png, slice_axis=args.slice_axis,
                           window=options.window)
        cancel.raise_if_cancelled()  # a signal during the extra outputs takes the label map with it too
    except BaseException:
        _remove(written.values())  # all or nothing: a failed extra output takes the label map with it
        raise
    progress("write", 1.0)
    return {"result": result, "written": written, "warnings": extra["input_warnings"] + result.warnings}


def _remove(paths: Any) -> None:
    for path in paths:
        path = Path(path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _print_summary(outcome: dict[str, Any]) -> None:
    result = outcome["result"]
    print(f"{'label':>5}  {'prompt':<24} {'voxels':>9} {'mL':>9} {'score':>6}  slices")
    for s in result.segments:
        rng = f"{s.slice_range[0]}-{s.slice_range[1]}" if s.slice_range else "-"
        print(f"{s.label:>5}  {s.prompt[:24]:<24} {s.voxels:>9d} {s.volume_ml:>9.2f} {s.score:>6.3f}  {rng}")
    for w in outcome["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"model: {result.model}; total {sum(result.timings.values()):.1f} s")
    print(f"wrote {outcome['written']['labels']} and {outcome['written']['report']}")


def run(args: argparse.Namespace) -> int:
    """Run ``infer``; returns the process exit code (never raises for user errors)."""
    style = "none" if args.quiet and args.progress == "bar" else args.progress
    progress = _Progress(style)
    try:
        with cancel_on_signals() as signals:  # Ctrl-C, SIGTERM, SIGHUP: stop cleanly, exit 3, nothing written
            outcome = _segment_and_write(args, signals.token, progress, loading=signals.immediately)
    except Cancelled as err:
        return _fail(args, progress, str(err), EXIT_CANCELLED)
    except KeyboardInterrupt:
        return _fail(args, progress, "Interrupted; nothing was written.", EXIT_CANCELLED)
    except MedSam3Error as err:
        return _fail(args, progress, str(err), EXIT_USER_ERROR)
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
    parser = argparse.ArgumentParser(prog="python -m medsam3_core.volume", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    add_arguments(sub.add_parser("infer", help="segment a scan or image by text prompts"))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
