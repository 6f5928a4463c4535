"""A stand-in for ``medsam3_core.volume infer`` that speaks the same JSON-lines protocol but thresholds instead of
running a model, so the Slicer module's process, geometry and import plumbing are tested in a second.

It reads and writes through SimpleITK (the ITK conventions the core and Slicer's readers follow), independently of
the module's own NRRD code. Label 1 (the first prompt) = voxels above ``--level``; other prompts stay empty.
Behaviour switches for the cancel tests: ``--hang`` keeps reporting progress until interrupted (SIGINT → the
``cancelled`` event and exit code 3, like the real CLI), ``--ignore-sigint`` makes it deaf to SIGINT, and
``--grandchild FILE`` starts a sleeping grandchild (like PythonSlicer's launcher → interpreter) and writes its pid.
"""

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def emit(event: dict) -> None:
    print(json.dumps(event), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command")
    parser.add_argument("input")
    parser.add_argument("prompts", nargs="+")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--level", type=float, default=0.0)
    parser.add_argument("--hang", action="store_true")
    parser.add_argument("--ignore-sigint", action="store_true")
    parser.add_argument("--grandchild", default=None)
    args, _unused = parser.parse_known_args()

    if args.ignore_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    if args.grandchild:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        Path(args.grandchild).write_text(str(child.pid))
    try:
        emit({"event": "progress", "stage": "load", "fraction": 1.0})
        print("a library printed this line", flush=True)
        if args.hang:
            while True:
                emit({"event": "progress", "stage": "detect", "fraction": 0.5})
                time.sleep(0.05)
        if not Path(args.input).is_file():
            emit({"event": "error", "message": f"Input {args.input} does not exist."})
            print(f"error: Input {args.input} does not exist.", file=sys.stderr)
            return 2
        image = sitk.ReadImage(args.input)
        voxels = sitk.GetArrayFromImage(image)
        labels = (voxels > args.level).astype(np.uint8)
        out = Path(args.output)
        out.mkdir(parents=True, exist_ok=True)
        label_image = sitk.GetImageFromArray(labels)
        label_image.CopyInformation(image)
        sitk.WriteImage(label_image, str(out / "labels.nrrd"), True)
        emit({"event": "progress", "stage": "detect", "fraction": 1.0})
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        segments = [{"prompt": p, "label": k, "voxels": int((labels == k).sum()),
                     "volume_ml": float((labels == k).sum()) * voxel_ml, "score": 0.9 if k == 1 else 0.0}
                    for k, p in enumerate(args.prompts, start=1)]
        report = {"model": "threshold", "segments": segments, "timings": {"read": 0.01, "detect": 0.2}}
        (out / "report.json").write_text(json.dumps(report))
        emit({"event": "done", "output": str(out.resolve()), "report": report})
        return 0
    except KeyboardInterrupt:
        emit({"event": "cancelled", "message": "Interrupted; nothing was written."})
        return 3


if __name__ == "__main__":
    sys.exit(main())
