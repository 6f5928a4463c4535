"""How fast full-size SAM3 weights load, in each format ``load_model`` accepts (not part of CI).

Builds a random full-size ``Sam3VideoModel`` (detector + tracker, 860 M parameters), writes it as a transformers
folder (``save_model``) and as a native ``sam3.pt``-style trainer checkpoint, converts the latter with
``medsam3 convert``, and times ``load_model`` on each in a fresh process (so the page cache, not a warm Python
heap, is what is measured). Writes ``bench/fidelity/LOADING.md``. Needs ≈4 GB RAM and ≈11 GB of scratch disk.

Usage: ``.venv/bin/python bench/fidelity/load_speed.py [--scratch DIR]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT = Path(__file__).with_name("LOADING.md")

# Peak RSS from /proc (VmHWM): getrusage's ru_maxrss survives fork+exec, so a child would report its parent's peak.
_LOAD = """
import json, re, sys, time, torch
torch.set_num_threads(2)
from medsam3_core.model.bundle import load_model
start = time.perf_counter()
bundle = load_model(sys.argv[1], device="cpu")
seconds = time.perf_counter() - start
peak_kb = int(re.search(r"VmHWM:\\s+(\\d+)", open("/proc/self/status").read()).group(1))
print(json.dumps({"seconds": seconds, "tracker": bundle.has_tracker, "peak_rss_gb": peak_kb / 2**20}))
"""


def _python(code_or_args: list[str]) -> str:
    done = subprocess.run([sys.executable, *code_or_args], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", help="folder for the ≈11 GB of test files (default: a temporary folder)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    import torch
    from transformers import Sam3VideoConfig

    from medsam3_core.model.convert import transformers_to_native
    from medsam3_core.model.bundle import random_video_model, save_model

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(dir=args.scratch) as scratch:
        scratch = Path(scratch)
        rows = []
        start = time.perf_counter()
        model = random_video_model(0, Sam3VideoConfig())
        rows.append(("build random full-size model", time.perf_counter() - start, None))
        start = time.perf_counter()
        save_model(model, scratch / "folder")
        rows.append(("save_model (transformers folder, safetensors)", time.perf_counter() - start, None))
        torch.save({"model": transformers_to_native(model.state_dict()), "epoch": 1}, scratch / "native.pt")
        del model
        start = time.perf_counter()
        _python(["-m", "medsam3_core.cli.main", "convert", str(scratch / "native.pt"), str(scratch / "converted")])
        rows.append(("medsam3 convert native .pt → folder (whole command)", time.perf_counter() - start, None))
        for label, target in (("load_model(transformers folder)", scratch / "folder"),
                              ("load_model(native .pt, converted on the fly)", scratch / "native.pt"),
                              ("load_model(converted folder)", scratch / "converted")):
            result = json.loads(_python(["-c", _LOAD, str(target)]))
            rows.append((label, result["seconds"], result["peak_rss_gb"]))
    lines = [
        "# Loading full-size SAM3 weights",
        "",
        "Produced by `bench/fidelity/load_speed.py` on a shared 2-core CPU (float32, 2 threads). Loads are",
        "memory-mapped: weights are paged in when first used, so the peak RSS right after loading stays small.",
        "",
        "| step | seconds | peak RSS after load (GB) |",
        "|---|---|---|",
        *[f"| {label} | {seconds:.1f} | {'' if rss is None else f'{rss:.2f}'} |" for label, seconds, rss in rows],
        "",
    ]
    OUT.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
