"""Every GPU measurement of the volume engine in one run, written to a JSON-lines file as it goes.

One command on a machine with a CUDA GPU (full-size SAM3 configuration, random weights, bfloat16)::

    PYTHONUNBUFFERED=1 python bench/gpu_check.py --out gpu_check.jsonl

Each measurement appends one JSON object to ``--out`` the moment it is done (a run cut short keeps what it had),
and prints it. In order of importance:

1. ``vit_floor`` — the ViT + FPN alone over all slices (the floor the engine should approach).
2. ``worst`` — track mode with the benchmark's worst-case settings (threshold 0, objects never end, at most 3
   objects per prompt), 1 and 5 prompts on 300 × 512².
3. ``realistic`` — the same with at most 1 object per prompt, 5 prompts.
4. ``session`` — a volume session: the first prompt (cold, encodes) and a second prompt (no ViT), 1 prompt each.
5. ``slices600`` — worst case, 5 prompts on 600 slices (peak memory against 300).
6. ``capped`` — 300 and 600 slices with the feature store capped to 2 GB of device memory, as on a 24 GB card
   (peak memory then grows with the number of slices only through the output and the compact detections).

Every time is wall time between ``torch.cuda.synchronize()`` calls after one untimed warm-up run; stage figures are
the engine's own CUDA-event timings (``medsam3_core.engine.timing``: they add up to the run's total); peak memory is
``torch.cuda.max_memory_allocated`` since a reset just before the run. The last line holds the ratios the goals are
stated in. ``--config tiny --device cpu --slices 6`` runs the same script on a CPU in seconds (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).absolute().parent))
sys.path.insert(0, str(Path(__file__).absolute().parents[1]))

from bench_engine import KEEP_ALL, _CountingTracker  # noqa: E402
from configs import PROMPTS, build_video, random_volume  # noqa: E402

from medsam3_core.engine.detector import Detector  # noqa: E402
from medsam3_core.engine.feature_store import StoreBudget  # noqa: E402
from medsam3_core.engine.preprocess import IntensityNormalizer, slice_stack, to_model_input  # noqa: E402
from medsam3_core.engine.session import VolumeSession  # noqa: E402
from medsam3_core.engine.volume_engine import VolumeEngine  # noqa: E402
from medsam3_core.model.bundle import bundle_from_video_model, select_device  # noqa: E402
from medsam3_core.segmenter import SegmentOptions  # noqa: E402


class Recorder:
    """Appends each measurement to the output file at once (flushed), and prints it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict] = {}

    def __call__(self, name: str, row: dict) -> dict:
        row = {"name": name, **row}
        self.rows[name] = row
        with self.path.open("a") as out:
            out.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        return row


def _sync(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _measured(cuda: bool, fn):
    """``(seconds, peak GB, output)`` of ``fn()``: synchronised wall time, peak memory since a reset."""
    _sync(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    _sync(cuda)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return seconds, peak, out


def _engine_row(seconds, peak, result, prompts: int, slices: int, max_objects: int) -> dict:
    propagated = _CountingTracker.propagated
    return {
        "slices": slices, "prompts": prompts, "max_objects": max_objects, "seconds": round(seconds, 3),
        "peak_gpu_gb": round(peak, 2) if peak is not None else None,
        "objects_per_slice": round(sum(propagated) / max(len(propagated), 1), 2),
        "stages_s": {k: round(v, 3) for k, v in result.timings.items()}, "notes": result.notes,
        "encoder_calls": result.encoder_calls,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.jsonl"))
    parser.add_argument("--config", default="full", choices=["tiny", "small", "full"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip", nargs="*", default=[], help="measurement names to leave out")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(1)
    record = Recorder(args.out)
    dev, dtype = select_device(args.device)
    cuda = dev.type == "cuda"
    import transformers

    record("environment", {
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu", "dtype": str(dtype),
        "torch": torch.__version__, "transformers": transformers.__version__, "config": args.config,
        "volume": [args.slices, args.size, args.size], "batch_size": args.batch_size,
        "free_gpu_gb": round(torch.cuda.mem_get_info()[0] / 2**30, 1) if cuda else None,
    })
    bundle = bundle_from_video_model(build_video(args.config), args.device, source="bench")
    volume = random_volume(args.slices, args.size)
    options = SegmentOptions(threshold=0.0, mode="track", batch_size=args.batch_size)

    def engine(max_objects: int = 3, budget=None) -> VolumeEngine:
        return VolumeEngine(bundle, max_objects=max_objects, rule=KEEP_ALL, tracker_factory=_CountingTracker,
                            store_budget=budget)

    def run(eng: VolumeEngine, vol, prompts: int):
        _CountingTracker.propagated = []
        return eng.run(vol, PROMPTS[:prompts], options)

    run(engine(), random_volume(min(args.slices, 2 * args.batch_size), args.size, seed=1), 5)  # warm-up

    if "vit_floor" not in args.skip:
        detector = Detector(bundle)
        stack, _ = slice_stack(volume, options.slice_axis)
        normalize = IntensityNormalizer.for_volume(volume, options.window)
        letterbox = detector.letterbox(stack.shape[1], stack.shape[2])

        def vit_only():
            for start in range(0, args.slices, args.batch_size):
                pixels = to_model_input(normalize(stack[start : start + args.batch_size]), letterbox, dev, dtype)
                detector.encode_images(pixels)

        seconds, peak, _ = _measured(cuda, vit_only)
        record("vit_floor", {"slices": args.slices, "seconds": round(seconds, 3),
                             "peak_gpu_gb": round(peak, 2) if peak is not None else None})
    for prompts in (1, 5):
        if "worst" not in args.skip:
            seconds, peak, result = _measured(cuda, lambda: run(engine(), volume, prompts))
            record(f"worst_{prompts}p", _engine_row(seconds, peak, result, prompts, args.slices, 3))
    if "realistic" not in args.skip:
        seconds, peak, result = _measured(cuda, lambda: run(engine(max_objects=1), volume, 5))
        record("realistic_5p", _engine_row(seconds, peak, result, 5, args.slices, 1))
    if "session" not in args.skip:
        session = VolumeSession(engine(), volume)
        _CountingTracker.propagated = []
        seconds, peak, result = _measured(cuda, lambda: session.run(PROMPTS[:1], options))
        record("session_cold_1p", _engine_row(seconds, peak, result, 1, args.slices, 3))
        _CountingTracker.propagated = []
        seconds, peak, result = _measured(cuda, lambda: session.run(PROMPTS[1:2], options))
        record("session_second_1p", {**_engine_row(seconds, peak, result, 1, args.slices, 3),
                                     "session_gb": round(session.nbytes / 2**30, 2)})
        session.close()
    if "slices600" not in args.skip:
        double = random_volume(2 * args.slices, args.size, seed=2)
        seconds, peak, result = _measured(cuda, lambda: run(engine(), double, 5))
        record("worst_5p_x2_slices", _engine_row(seconds, peak, result, 5, 2 * args.slices, 3))
    if "capped" not in args.skip:
        cap = StoreBudget(device_bytes=2 * 2**30, host_bytes=StoreBudget.for_device(dev).host_bytes)
        for factor in (1, 2):
            vol = volume if factor == 1 else random_volume(2 * args.slices, args.size, seed=2)
            seconds, peak, result = _measured(cuda, lambda: run(engine(budget=cap), vol, 5))
            record(f"capped_5p_x{factor}_slices", _engine_row(seconds, peak, result, 5, factor * args.slices, 3))

    rows = record.rows

    def ratio(a: str, b: str, key: str = "seconds"):
        if a in rows and b in rows and rows[a].get(key) and rows[b].get(key):
            return round(rows[a][key] / rows[b][key], 3)
        return None

    record("ratios", {
        "worst 1 prompt / ViT floor (goal <= 3)": ratio("worst_1p", "vit_floor"),
        "session second prompt / cold 1-prompt run (goal <= 0.40)": ratio("session_second_1p", "worst_1p"),
        "session second prompt / session first prompt": ratio("session_second_1p", "session_cold_1p"),
        "peak memory 2x slices / 1x (default store)": ratio("worst_5p_x2_slices", "worst_5p", "peak_gpu_gb"),
        "peak memory 2x slices / 1x (store capped at 2 GB; goal <= 1.15)": ratio(
            "capped_5p_x2_slices", "capped_5p_x1_slices", "peak_gpu_gb"),
        "goals (seconds)": "worst 5 prompts <= 12, worst 1 prompt <= 6, realistic 5 prompts <= 8; peak <= 24 GB",
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
