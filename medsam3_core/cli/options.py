"""Options shared by ``medsam3 infer`` and ``medsam3 batch``: one definition, so both commands accept the same
flags with the same defaults, and a setting added here reaches both.

Only what describes *how* to segment and *what* to write lives here (model, device, mode, threshold, window,
formats, extra outputs, progress). What names the input and the output (one scan and one folder for ``infer``,
many scans and a root folder for ``batch``) stays with each command. Each setting is turned into the core's own
type once, here (:func:`segment_options`), before any work starts.
"""

from __future__ import annotations

import argparse

from medsam3_core.segmenter import CLIP_FUSIONS, MODES, SLICE_AXES, SegmentOptions

__all__ = ["OUTPUT_FORMATS", "add_common_arguments", "segment_options", "progress_style"]

OUTPUT_FORMATS = ("nii.gz", "nii", "nrrd", "mha", "png")


def add_common_arguments(parser: argparse.ArgumentParser, *, per_case: bool = False) -> None:
    """Add the model, run, output and display options.

    Args:
        per_case: the command writes one folder per case (``batch``): ``--png`` and ``--dicom-seg`` then name a
            folder and a file *inside each case's folder* instead of one path.
    """
    inside = " inside each case's folder" if per_case else ""
    parser.add_argument("--model", default="demo", help="'demo', a transformers model folder, a .safetensors or a "
                        "SAM3 / Medical SAM3 .pt checkpoint (default: %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="track: detector + memory tracker through the whole volume; detect: detector on every "
                             "slice only; clips: independent short clips through detector + tracker, merged (how the "
                             "Medical SAM3 3D release was trained). Default: the model's recommended mode, else track")
    parser.add_argument("--clip-length", type=int, default=None,
                        help="slices per clip in clips mode (default: the model's, 4 for the Medical SAM3 3D release)")
    parser.add_argument("--clip-fusion", choices=CLIP_FUSIONS, default="pixel_score",
                        help="how clips mode merges overlapping clips (default: %(default)s)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="detection score threshold (default: the model's recommended threshold, 0.5 if it "
                             "states none)")
    parser.add_argument("--window", default=None,
                        help="CT window preset (soft-tissue, lung, bone, brain) or CENTRE,WIDTH; default: the DICOM "
                             "window, else soft-tissue for CT and robust percentiles otherwise")
    parser.add_argument("--slice-axis", choices=SLICE_AXES, default="axial", help="slicing direction (default: axial)")
    parser.add_argument("--modality", default=None, help="override the modality hint (CT, MR, ...)")
    parser.add_argument("--frame", type=int, default=None, help="frame index of a 4D input")
    parser.add_argument("--max-voxels", type=int, default=None, metavar="N",
                        help="refuse inputs whose header claims more voxels (default: 2**30)")
    parser.add_argument("--format", choices=OUTPUT_FORMATS, default="nii.gz",
                        help="label map format (png for 2D images only; default: nii.gz)")
    parser.add_argument("--per-segment", action="store_true", help="also write one binary mask per prompt")
    parser.add_argument("--confidence-map", action="store_true", help="also write a per-voxel confidence map")
    parser.add_argument("--cleanup", action="store_true", help="keep the largest 3D component per object, fill holes")
    parser.add_argument("--batch-size", type=int, default=4, help="slices per forward pass (default: 4)")
    parser.add_argument("--memory-size", type=int, default=7, help="tracker memory-bank frames (default: 7)")
    parser.add_argument("--synonyms", default=None, metavar="JSON", help="extra synonym table for prompt resolution")
    parser.add_argument("--png", default=None, metavar="DIR",
                        help=f"write overlay pictures of a few slices to DIR{inside}")
    parser.add_argument("--dicom-seg", default=None, metavar="FILE",
                        help=f"also write a DICOM SEG to FILE{inside} (DICOM input only)")
    parser.add_argument("--server", default=None, metavar="URL", help="run on a remote medsam3 server")
    parser.add_argument("--api-key", default=None, help="API key of the remote server (or MEDSAM3_API_KEY)")
    parser.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                        help="progress display: bar on stderr, json lines on stdout, or none")
    parser.add_argument("--quiet", action="store_true", help="no progress and no summary")


def segment_options(args: argparse.Namespace) -> SegmentOptions:
    """The run settings of parsed options (the options check every value and parse the window themselves)."""
    return SegmentOptions(
        threshold=args.threshold, window=args.window,
        slice_axis=args.slice_axis, mode=args.mode, batch_size=args.batch_size, cleanup=args.cleanup,
        memory_size=args.memory_size, confidence_map=args.confidence_map, clip_length=args.clip_length,
        clip_fusion=args.clip_fusion,
    )


def progress_style(args: argparse.Namespace) -> str:
    """``bar``, ``json`` or ``none``: ``--quiet`` silences the bar but keeps JSON lines a program asked for."""
    return "none" if args.quiet and args.progress == "bar" else args.progress
