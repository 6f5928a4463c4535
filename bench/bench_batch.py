"""Benchmark: ``medsam3 batch`` against one ``infer`` process per scan, and two torchrun ranks against one.

Prints ratios measured in one run (wall-clock seconds of whole commands, as a user would time them):

* ``batch`` over N demo-sized scans vs N separate ``infer`` processes (target ≥ 1.5×): the process start and the
  model load are paid once instead of N times;
* ``torchrun --nproc_per_node=2`` vs ``--nproc_per_node=1``, each rank with one thread (target ≥ 1.6× on two
  cores): the cases are shared out, and each rank pays its own start and model load;
* the per-case overhead of ``batch``: a case's wall time (read wait, inference, writing) against the engine's own
  time for it, from ``summary.json`` and each ``report.json``.

The scans are phantoms of the demo scan's size (48 × 160 × 160 voxels, 2.2 × 2.2 × 5 mm, oblique) with different
seeds. Every run uses ``--device cpu`` and ``OMP_NUM_THREADS=1``; the outputs of ``batch`` and ``infer`` are checked
to be equal before any figure is printed.

Other processes on the machine change the torchrun ratio most (two ranks need two free cores), so the load
average before and after, and the CPU seconds of every command with its children, are printed too.

Run from the repository root: ``python bench/bench_batch.py`` (a few minutes on 2 CPU cores with the demo model).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medsam3_core.io.reading import read_volume, write_volume  # noqa: E402
from medsam3_core.phantom import DEMO_DIRECTION, DEMO_SHAPE, DEMO_SPACING, make_abdomen_phantom  # noqa: E402

PROMPTS = ["kidney", "liver"]
COMMON = ["--device", "cpu", "--progress", "none", "--quiet"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds of ``command``, and the CPU seconds of it and every process it started (torchrun's ranks)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(command, env=_env(), cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def _sum(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return sum(p[0] for p in pairs), sum(p[1] for p in pairs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(ranks: int, scans: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", f"--master_port={_free_port()}",
            "-m", "medsam3_core.batch", str(scans), "-p", *PROMPTS, "-o", str(out), *COMMON]


def _write_scans(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for seed in range(count):
        ct, _, _ = make_abdomen_phantom(seed, DEMO_SHAPE, DEMO_SPACING, DEMO_DIRECTION)
        paths.append(folder / f"scan{seed:02d}.nii.gz")
        write_volume(ct, paths[-1])
    return paths


def _check_equal(a: Path, b: Path) -> None:
    np.testing.assert_array_equal(read_volume(a / "labels.nii.gz").array, read_volume(b / "labels.nii.gz").array)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12, help="number of demo-sized scans (default: 12)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        root = Path(tmp)
        scans = _write_scans(root / "scans", args.cases)
        python = [sys.executable]
        load_before = os.getloadavg()[0]
        times = {
            "batch": _timed([*python, "-m", "medsam3_core.batch", str(root / "scans"), "-p", *PROMPTS,
                             "-o", str(root / "batch"), *COMMON]),
            "infer": _sum([_timed([*python, "-m", "medsam3_core.volume", "infer", str(scan), *PROMPTS,
                                   "-o", str(root / "infer" / scan.name.split(".")[0]), *COMMON]) for scan in scans]),
            "torchrun_1": _timed(_torchrun(1, root / "scans", root / "rank1")),
            "torchrun_2": _timed(_torchrun(2, root / "scans", root / "rank2")),
        }
        load_after = os.getloadavg()[0]
        for scan in scans:
            case = scan.name.split(".")[0]
            for other in ("infer", "rank1", "rank2"):
                _check_equal(root / "batch" / case, root / other / case)
        rows = json.loads((root / "batch" / "summary.json").read_text())["cases"]
        case_s = [row["seconds"] for row in rows]
        engine_s = [json.loads((Path(row["output"]) / "report.json").read_text())["timings"]["total"] for row in rows]

    wall = {name: t[0] for name, t in times.items()}
    print(f"{args.cases} demo-sized cases ({'x'.join(map(str, DEMO_SHAPE))} voxels), prompts {' '.join(PROMPTS)}, "
          f"CPU, one thread per process, {os.cpu_count()} cores, load average {load_before:.1f} before and "
          f"{load_after:.1f} after:")
    for name, (seconds, cpu) in times.items():
        print(f"  {name:<11} {seconds:7.1f} s wall {cpu:7.1f} s CPU")
    print(f"batch vs {args.cases} infer processes: {wall['infer'] / wall['batch']:.2f}x (target >= 1.5x)")
    print(f"2 torchrun ranks vs 1 rank: {wall['torchrun_1'] / wall['torchrun_2']:.2f}x (target >= 1.6x; needs two "
          f"free cores: CPU seconds {times['torchrun_2'][1] / times['torchrun_1'][1]:.2f}x of one rank's)")
    # Amdahl from the CPU seconds: each rank pays the start (imports, model load) F; the cases cost W in all.
    start = times["torchrun_2"][1] - times["torchrun_1"][1]
    work = times["torchrun_1"][1] - start
    print(f"  per-rank start {start:.1f} CPU s, all cases {work:.1f} CPU s: on two idle cores 2 ranks can reach "
          f"at most {(start + work) / (start + work / 2):.2f}x")
    print(f"batch per case: {np.mean(case_s):.2f} s wall vs {np.mean(engine_s):.2f} s in the engine "
          f"({np.mean(case_s) / np.mean(engine_s):.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
