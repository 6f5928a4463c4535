"""Soak test of ``medsam3 serve``'s memory: a bounded loop of large uploads against a loopback server, measuring RSS.

Each round sends three uploads to one server process (the demo model on CPU):

* ``bomb``: about 1 MB of compressed zeros whose header declares a grey volume of 2**30 voxels (1 GiB), twice the
  default voxel limit. It must be refused (422) from its header, before anything is decompressed;
* ``bomb3``: the same at 3 × 2**29 - 1 voxels, just under the old allowance for three RGB values per voxel;
* ``job``: a real job, a ``--slices`` × 512 × 512 int16 phantom, run to the end and downloaded.

Prints the server's idle RSS (after one small warm-up job), its peak (VmHWM) and its RSS after the loop, and the ratio
of the last to idle; the goal is at most 1.10. Run from the repository root, one thread:
``OMP_NUM_THREADS=1 python bench/server_soak.py --rounds 3``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medsam3_core.io.geometry import Volume  # noqa: E402
from medsam3_core.segmenter import SegmentOptions  # noqa: E402
from medsam3_core.server import wire  # noqa: E402


def _status_kb(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def _zeros_npz(shape: tuple[int, ...]) -> bytes:
    """An honest ``.npz`` of uint8 zeros of ``shape``, compressed in chunks (never held uncompressed)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": shape})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("array.npy", "w", force_zip64=True) as member:
            member.write(header.getvalue())
            remaining, chunk = int(np.prod(shape)), bytes(64 * 2**20)
            while remaining:
                member.write(chunk[: min(remaining, len(chunk))])
                remaining -= min(remaining, len(chunk))
    return buf.getvalue()


def _start_server() -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "medsam3_core.server", "--model", "demo", "--device", "cpu", "--port", "0",
         "--no-auth", "--max-upload-mb", "256"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    for line in server.stderr:
        match = re.search(r"ready at (http://127\.0\.0\.1:\d+)", line)
        if match:
            threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()  # keep draining
            return server, match.group(1)
    raise SystemExit("the server did not start")


def _submit(http: httpx.Client, npz: bytes, header: dict) -> httpx.Response:
    return http.post("/v1/jobs", files={"volume": ("v.npz", npz)}, data={"request": json.dumps(header)})


def _run_job(http: httpx.Client, npz: bytes, header: dict) -> None:
    response = _submit(http, npz, header)
    response.raise_for_status()
    job = response.json()["job_id"]
    while (state := http.get(f"/v1/jobs/{job}").json()["state"]) in ("queued", "running"):
        time.sleep(0.2)
    if state != "done":
        raise SystemExit(f"the job ended {state}")
    http.get(f"/v1/jobs/{job}/result").raise_for_status()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slices", type=int, default=32, help="slices of the 512² job volume (default: 32)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    big = Volume(rng.integers(-200, 300, size=(args.slices, 512, 512)).astype(np.int16), modality="CT")
    job_npz, header = wire.encode_volume(big, ["liver"], SegmentOptions(mode="detect"))
    small_npz, _ = wire.encode_volume(Volume(np.zeros((2, 64, 64), np.int16), modality="CT"), ["liver"],
                                      SegmentOptions(mode="detect"))
    started = time.perf_counter()
    bombs = {"bomb": _zeros_npz((1024, 1024, 1024)), "bomb3": _zeros_npz((3 * 2**29 - 1, 1, 1))}
    print(f"uploads: bomb {len(bombs['bomb']) / 2**20:.1f} MB, bomb3 {len(bombs['bomb3']) / 2**20:.1f} MB, "
          f"job {len(job_npz) / 2**20:.1f} MB (built in {time.perf_counter() - started:.0f} s)")

    server, url = _start_server()
    try:
        with httpx.Client(base_url=url, timeout=600) as http:
            _run_job(http, small_npz, header)  # first job: lazy initialisation belongs to idle, not to the loop
            time.sleep(1.0)
            idle = _status_kb(server.pid, "VmRSS")
            print(f"idle RSS after one small job: {idle / 1024:.0f} MB")
            for n in range(args.rounds):
                codes = {name: _submit(http, npz, header).status_code for name, npz in bombs.items()}
                after_bombs = _status_kb(server.pid, "VmRSS")
                t0 = time.perf_counter()
                _run_job(http, job_npz, header)
                rss = _status_kb(server.pid, "VmRSS")
                print(f"round {n + 1}: bombs {codes}, RSS after them {after_bombs / 1024:.0f} MB; job "
                      f"{time.perf_counter() - t0:.1f} s, RSS after it {rss / 1024:.0f} MB")
                if any(code != 422 for code in codes.values()):
                    raise SystemExit("a bomb was not refused with 422")
            time.sleep(1.0)
            final, peak = _status_kb(server.pid, "VmRSS"), _status_kb(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(60)
    ratio = final / idle
    print(f"peak RSS {peak / 1024:.0f} MB; RSS after the loop {final / 1024:.0f} MB = {ratio:.3f} × idle "
          f"({'within' if ratio <= 1.10 else 'NOT within'} 10 %)")


if __name__ == "__main__":
    main()
