"""Benchmark: the engine's unit costs on one slice, and what they imply for 5 prompts against 1 on a long volume.

The engine's work per slice is ``E + H(P) + K · objects``: ``E`` the once-per-slice encoding (ViT, detector FPN,
tracker neck), ``H(P)`` the detector heads for ``P`` prompts (per (slice, prompt) pair, with the prompt-independent
part shared, ``medsam3_core/engine/heads.py``), ``K`` the tracker per object (memory attention, mask decoder, memory
encoder). The ``full`` benchmark of ``bench_engine.py`` runs 2 slices, where no object has more than one remembered
slice; on a long volume every bank is full (the conditioning memory plus ``memory_size - 1`` recent slices), and the
memory attention, which attends to all of them, is the tracker's dominant cost. This script measures ``E``, ``H(1)``,
``H(5)`` and ``K`` with full banks on one slice (CPU seconds, one torch thread), and prints the ratio ``(E + H(5) + K ·
o5) / (E + H(1) + K · o1)`` for the benchmark's setting (3 objects per prompt) and for one object per prompt (a trained
model, one organ per prompt).

Run from the repository root: ``python bench/unit_costs.py --config full`` (a few minutes), or ``--config small``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).absolute().parent))
sys.path.insert(0, str(Path(__file__).absolute().parents[1]))

from configs import PROMPTS, build_video  # noqa: E402

from medsam3_core.engine.allocator import reuse_freed_memory  # noqa: E402
from medsam3_core.engine.detector import Detector  # noqa: E402
from medsam3_core.model.bundle import bundle_from_video_model  # noqa: E402
from medsam3_core.engine.tracker import MemoryTracker  # noqa: E402

NUM_SLICES = 300  # object-pointer encodings are normalised by the volume's length


def _cpu(repeats: int, fn, *args):
    """Median CPU seconds of ``repeats`` calls, and the last call's result."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        out = fn(*args)
        times.append(time.process_time() - start)
    return statistics.median(times), out


def unit_costs(config: str, objects: int, memory_size: int, repeats: int) -> dict:
    bundle = bundle_from_video_model(build_video(config), "cpu", source="bench")
    detector = Detector(bundle)
    tracker = MemoryTracker(bundle, memory_size, NUM_SLICES)
    size = bundle.image_size
    pixels = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.inference_mode():
        text = {p: detector.encode_text(PROMPTS[:p]) for p in (1, 5)}
        detector.detect(detector.encode_images(pixels), text[1], top_k=3)  # warm-up (allocator, kernel choice)

        def encode():
            vision = detector.encode_images(pixels)
            return vision, tracker.features(vision)[0]

        encode_s, (vision, feats) = _cpu(repeats, encode)
        heads_s = {p: _cpu(repeats, detector.detect, vision, text[p], 3, 0.0)[0] for p in (1, 5)}

        grid = tracker.mask_grid
        masks = torch.zeros(objects, *grid, dtype=torch.bool)
        for i in range(objects):
            masks[i, grid[0] // 4 : grid[0] // 2, i : grid[1] // 2 + i] = True
        memories = tracker.seed(feats, masks, 0)
        logits = torch.where(masks, 10.0, -10.0)
        present = torch.ones(objects, dtype=torch.bool)
        pointers = torch.cat([m.conditioning.pointer for m in memories])
        for index in range(1, memory_size):  # fill every bank: the memory encoder only, no propagation needed
            tracker.remember(feats, memories, index, logits, present, pointers)

        def track(batch):  # one step on slice ``memory_size``; remembering it keeps every bank full
            step = tracker.propagate(feats, batch, memory_size)
            tracker.remember(feats, batch, memory_size, step.mask_logits, present[: len(batch)], step.pointers)

        track_s = {n: _cpu(repeats, track, memories[:n])[0] for n in (1, objects)}
    frames = [1 + len(m.recent) for m in memories]
    # A tracker step costs fixed + per_object · n: the fixed part is per slice, like the encoding.
    per_object = max(track_s[objects] - track_s[1], 0.0) / (objects - 1)
    fixed = track_s[1] - per_object

    def ratio(per_prompt: int) -> float:
        five = encode_s + heads_s[5] + fixed + per_object * 5 * per_prompt
        one = encode_s + heads_s[1] + fixed + per_object * per_prompt
        return five / one

    return {
        "config": config, "memory_frames_per_object": frames, "encode_s": round(encode_s, 3),
        "heads_s": {f"{p} prompt(s)": round(s, 3) for p, s in heads_s.items()},
        "track_s": {f"{n} object(s)": round(s, 3) for n, s in track_s.items()},
        "track_per_step_s": round(fixed, 3), "track_per_object_s": round(per_object, 3),
        "implied 5/1 ratio, 3 objects per prompt": round(ratio(3), 2),
        "implied 5/1 ratio, 1 object per prompt": round(ratio(1), 2),
        "implied 5/1 ratio, tracker free": round((encode_s + heads_s[5]) / (encode_s + heads_s[1]), 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="small", choices=["tiny", "small", "full"])
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--memory-size", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=5, help="median of this many (use 1 for full)")
    args = parser.parse_args(argv)
    if args.objects < 2:
        parser.error("--objects must be at least 2 (the per-object cost is the difference to one object)")
    torch.set_num_threads(1)
    reuse_freed_memory()  # as the engine does
    print(json.dumps(unit_costs(args.config, args.objects, args.memory_size, args.repeats), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
