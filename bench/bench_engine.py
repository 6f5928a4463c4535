"""Benchmark: the volume engine against the stock transformers ``Sam3VideoModel`` pipeline, same weights, same run.

Prints ratios measured in one run (timed tests would be flaky on shared CPUs; ratios within one run are not):

* ``speed``  — 1 prompt vs 5 prompts with the engine, and the stock pipeline with 1 prompt, 5 prompts in one
  inference session, and 5 prompts one at a time (the naive way), alternating repeats, medians.
* ``memory`` — one run in *this* process, printing its peak RSS (``ru_maxrss``) as JSON; ``all`` starts one fresh
  subprocess per (implementation, slice count) so peaks do not contaminate each other.
* ``full``   — 1 vs 5 prompts with the full-size (1008², ViT-L) configuration on a few slices.
* ``device`` — the GPU variant: full size in bfloat16 on a 300×512² volume with 5 prompts (one run; every GPU
  measurement at once is ``bench/gpu_check.py``).
* ``session`` — a volume session's second prompt against a cold 1-prompt run, alternating repeats, medians.
* ``all``    — speed for tiny and small, memory for 100 and 400 slices (tiny), optionally ``--full``.

Engine settings mirror the stock pipeline's (``bench/stock.py``): threshold 0 and at most 3 objects per prompt, and
objects never end, so both track 3 objects per prompt on every slice (printed as ``objects/slice``).

Run from the repository root: ``python bench/bench_engine.py all`` (one torch thread; see bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).absolute().parent))
sys.path.insert(0, str(Path(__file__).absolute().parents[1]))

from configs import PROMPTS, build_video, random_volume  # noqa: E402
from stock import run_stock, video_frames  # noqa: E402

from medsam3_core.engine.allocator import reuse_freed_memory  # noqa: E402
from medsam3_core.engine.fusion import FusionRule  # noqa: E402
from medsam3_core.engine.tracker import MemoryTracker  # noqa: E402
from medsam3_core.engine.volume_engine import VolumeEngine  # noqa: E402
from medsam3_core.model.bundle import bundle_from_video_model, select_device  # noqa: E402
from medsam3_core.segmenter import SegmentOptions  # noqa: E402

# Objects never end and every detection may start one: the engine keeps 3 objects per prompt, like stock.
KEEP_ALL = FusionRule(spawn_score=0.0, keep_score=0.0, patience=10**9)


class _CountingTracker(MemoryTracker):
    """Counts the objects propagated per slice (random trackers call most of them "absent", but they are tracked)."""

    propagated: list[int] = []

    def propagate(self, feats, memories, slice_index):
        _CountingTracker.propagated.append(len(memories))
        return super().propagate(feats, memories, slice_index)


def _engine_runner(video, mode: str = "track", device: str = "cpu", batch_size: int = 4, clock=time.process_time):
    """``run(volume, prompts)`` with the benchmark's engine settings; stage timings by ``clock`` (CPU seconds by
    default, like the totals on the shared CPU machine)."""
    bundle = bundle_from_video_model(video, device, source="bench")
    engine = VolumeEngine(bundle, max_objects=3, rule=KEEP_ALL, tracker_factory=_CountingTracker, clock=clock)

    def run(volume, prompts):
        _CountingTracker.propagated = []
        options = SegmentOptions(threshold=0.0, mode=mode, batch_size=batch_size)
        result = engine.run(volume, prompts, options)
        propagated = _CountingTracker.propagated
        return {"objects_per_slice": sum(propagated) / max(len(propagated), 1),
                "timings": {k: round(v, 3) for k, v in result.timings.items()}}

    return run


def _timed(fn, *args) -> tuple[float, float, dict]:
    """Wall and CPU seconds of ``fn(*args)``. With one torch thread the CPU time is what the run itself used, so it
    is what the ratios are taken from: wall time also counts whatever else the shared machine was running."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu, out


def speed(config: str, slices: int, repeats: int) -> dict:
    """Median seconds of each setup, alternating setups within every repeat (plus one untimed warm-up)."""
    video = build_video(config)
    size = video.config.detector_config.vision_config.backbone_config.image_size
    volume = random_volume(slices, size)
    frames = video_frames(volume, size)
    engine = _engine_runner(video)
    setups = {
        "engine, 1 prompt": lambda: engine(volume, PROMPTS[:1]),
        "engine, 5 prompts": lambda: engine(volume, PROMPTS),
        "stock, 1 prompt": lambda: run_stock(video, frames, PROMPTS[:1]),
        "stock, 5 prompts together": lambda: run_stock(video, frames, PROMPTS),
        "stock, 5 prompts one at a time": lambda: [run_stock(video, frames, [p]) for p in PROMPTS][-1],
    }
    for fn in setups.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in setups}
    walls: dict[str, list[float]] = {name: [] for name in setups}
    info: dict[str, dict] = {}
    for _ in range(repeats):
        for name, fn in setups.items():
            wall, cpu, info[name] = _timed(fn)
            times[name].append(cpu)
            walls[name].append(wall)
    rows = {name: {"median_cpu_s": statistics.median(t), "cpu_s": [round(x, 3) for x in t],
                   "wall_s": [round(x, 3) for x in walls[name]], **info[name]}
            for name, t in times.items()}
    med = {name: r["median_cpu_s"] for name, r in rows.items()}
    ratios = {
        "engine 5 prompts / engine 1 prompt": med["engine, 5 prompts"] / med["engine, 1 prompt"],
        "stock 5 prompts together / stock 1 prompt": med["stock, 5 prompts together"] / med["stock, 1 prompt"],
        "stock 5 prompts one at a time / engine 5 prompts": (
            med["stock, 5 prompts one at a time"] / med["engine, 5 prompts"]
        ),
        "stock 5 prompts together / engine 5 prompts": (
            med["stock, 5 prompts together"] / med["engine, 5 prompts"]
        ),
        "stock 1 prompt / engine 1 prompt": med["stock, 1 prompt"] / med["engine, 1 prompt"],
    }
    return {"config": config, "slices": slices, "repeats": repeats, "setups": rows, "ratios": ratios}


def _status_mb(key: str) -> float:
    """``VmRSS``/``VmHWM`` of this process from /proc, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def memory(config: str, slices: int, impl: str, prompts: int) -> dict:
    """Peak RSS of one run in this process (call in a fresh subprocess).

    ``ru_maxrss`` cannot be reset and imports/model building already peak above a tiny run, so the run's own peak
    is read as ``VmHWM`` after resetting it (``/proc/self/clear_refs`` = 5) just before the run.
    """
    video = build_video(config)
    size = video.config.detector_config.vision_config.backbone_config.image_size
    volume = random_volume(slices, size)
    runner = _engine_runner(video) if impl == "engine" else None
    frames = video_frames(volume, size) if impl == "stock" else None
    before = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    with torch.inference_mode():
        out = runner(volume, PROMPTS[:prompts]) if runner else run_stock(video, frames, PROMPTS[:prompts])
    return {"impl": impl, "config": config, "slices": slices, "prompts": prompts,
            "rss_before_run_mb": round(before, 1), "run_peak_rss_mb": round(_status_mb("VmHWM"), 1),
            "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "objects_per_slice": out["objects_per_slice"]}


def full(slices: int) -> dict:
    """1 vs 5 prompts with the full-size configuration (ViT-dominated), engine only."""
    video = build_video("full")
    size = video.config.detector_config.vision_config.backbone_config.image_size
    volume = random_volume(slices, size)
    engine = _engine_runner(video)
    rows = {}
    for name, prompts in (("engine, 1 prompt", PROMPTS[:1]), ("engine, 5 prompts", PROMPTS)):
        wall, cpu, out = _timed(engine, volume, prompts)
        rows[name] = {"cpu_s": round(cpu, 2), "wall_s": round(wall, 2), **out}
    ratio = rows["engine, 5 prompts"]["cpu_s"] / rows["engine, 1 prompt"]["cpu_s"]
    return {"config": "full", "slices": slices, "setups": rows, "ratios": {"engine 5 prompts / 1 prompt": ratio}}


def device_run(config: str, device: str, slices: int, size: int, prompts: int, batch_size: int) -> dict:
    """The issue's GPU variant: one engine run (track mode, worst-case settings as in ``speed``) on a random
    ``slices × size × size`` volume, after a warm-up run on a few slices (CUDA context, kernel selection).

    On CUDA the bundle runs in bfloat16 with TF32 (``select_device``); seconds are wall time after a synchronize,
    and the peak of ``torch.cuda.max_memory_allocated`` is reported.
    """
    dev, dtype = select_device(device)
    run = _engine_runner(build_video(config), device=device, batch_size=batch_size, clock=time.perf_counter)
    cuda = dev.type == "cuda"

    def once(volume):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = run(volume, PROMPTS[:prompts])
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start, out

    once(random_volume(min(slices, 4), size, seed=1))
    seconds, out = once(random_volume(slices, size))
    return {
        "config": config, "device": torch.cuda.get_device_name() if cuda else str(dev), "dtype": str(dtype),
        "volume": [slices, size, size], "prompts": prompts, "batch_size": batch_size, "seconds": round(seconds, 2),
        **out, "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def session(config: str, slices: int, repeats: int) -> dict:
    """CPU time of a cold 1-prompt run against a second 1-prompt call in a volume session (the session's first
    call, which encodes, is untimed), alternating within each repeat; plus the session's first call for reference."""
    from medsam3_core.engine.session import VolumeSession

    video = build_video(config)
    size = video.config.detector_config.vision_config.backbone_config.image_size
    volume = random_volume(slices, size)
    bundle = bundle_from_video_model(video, "cpu", source="bench")
    engine = VolumeEngine(bundle, max_objects=3, rule=KEEP_ALL, clock=time.process_time)
    options = SegmentOptions(threshold=0.0, mode="track", batch_size=4)
    engine.run(volume, PROMPTS[:1], options)  # warm-up
    cold, first, second, stages = [], [], [], {}
    for _ in range(repeats):
        cold.append(_timed(engine.run, volume, PROMPTS[:1], options)[1])
        with VolumeSession(engine, volume) as kept:
            first.append(_timed(kept.run, PROMPTS[:1], options)[1])
            _, cpu, result = _timed(kept.run, PROMPTS[1:2], options)
            second.append(cpu)
            stages = {k: round(v, 3) for k, v in result.timings.items()}
            assert result.encoder_calls == 0
    med = {name: statistics.median(v) for name, v in (("cold", cold), ("first", first), ("second", second))}
    return {"config": config, "slices": slices, "repeats": repeats,
            "cpu_s": {"cold 1-prompt run": cold, "session first prompt": first, "session second prompt": second},
            "second_prompt_stages": stages,
            "ratios": {"session second prompt / cold 1-prompt run (goal <= 0.5)": med["second"] / med["cold"],
                       "session first prompt / cold 1-prompt run": med["first"] / med["cold"]}}


def _memory_all() -> list[dict]:
    runs = [(impl, n) for impl in ("engine", "stock") for n in (100, 400)]
    return [_subprocess(["memory", "--impl", impl, "--slices", str(n)]) for impl, n in runs]


def _subprocess(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--config", default="tiny", choices=["tiny", "small"])
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("memory")
    p.add_argument("--config", default="tiny", choices=["tiny", "small"])
    p.add_argument("--slices", type=int, default=100)
    p.add_argument("--impl", default="engine", choices=["engine", "stock"])
    p.add_argument("--prompts", type=int, default=5)
    p = sub.add_parser("full")
    p.add_argument("--slices", type=int, default=2)
    p = sub.add_parser("memory-all", help="memory for 100 and 400 slices, engine and stock, fresh processes")
    p = sub.add_parser("device", help="the GPU variant: full size, bf16, 300×512², 5 prompts (goal < 15 s, H100)")
    p.add_argument("--config", default="full", choices=["tiny", "small", "full"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--slices", type=int, default=300)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--prompts", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8)
    p = sub.add_parser("session", help="volume session: second prompt vs a cold 1-prompt run (CPU)")
    p.add_argument("--config", default="tiny", choices=["tiny", "small"])
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p = sub.add_parser("all")
    p.add_argument("--full", action="store_true", help="also the full-size configuration (minutes per slice on CPU)")
    p.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command != "device":  # a GPU run keeps torch's default host threads
        torch.set_num_threads(1)
    reuse_freed_memory()  # the engine does this itself; done first, so every stock setup runs under it too

    if args.command == "speed":
        print(json.dumps(speed(args.config, args.slices, args.repeats)))
    elif args.command == "memory":
        print(json.dumps(memory(args.config, args.slices, args.impl, args.prompts)))
    elif args.command == "memory-all":
        print(json.dumps(_memory_all(), indent=1))
    elif args.command == "session":
        print(json.dumps(session(args.config, args.slices, args.repeats)))
    elif args.command == "full":
        print(json.dumps(full(args.slices)))
    elif args.command == "device":
        print(json.dumps(device_run(args.config, args.device, args.slices, args.size, args.prompts, args.batch_size)))
    else:
        results = {"speed": [speed("tiny", 32, args.repeats), speed("small", 32, max(1, args.repeats - 1))]}
        results["memory"] = _memory_all()
        if args.full:
            results["full"] = full(2)
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
