"""Fidelity proof: our native→transformers conversion reproduces Meta's SAM3 numerically (not part of CI).

Runs in the separate environment made by ``setup_venv.sh`` (Meta's ``sam3`` wheel + torchvision), on CPU:

1. builds Meta's full-size SAM3 video model (detector + tracker) with random weights and records every parameter
   name and shape into ``Testing/data/sam3_native_keys.json.gz`` — the manifest CI checks conversion coverage with;
2. builds Meta's full-size image model with a fixed seed, converts its ``state_dict`` with
   :func:`medsam3_core.convert.native_to_transformers`, loads it into transformers' ``Sam3Model`` through
   :func:`medsam3_core.checkpoints.instantiate` (the path every real checkpoint takes), runs both on the same
   1008×1008 image and text prompt, and reports the largest absolute differences of class logits, presence,
   boxes and mask logits;
3. writes the figures and versions to ``bench/fidelity/RESULTS.md``.

Random weights are as good as trained ones for this purpose (every layer participates, the tensors are generic),
and need no download. Costs on a 2-core CPU: ≈4.5 GB RAM per model and ≈1 min per full-size forward.

Usage: ``/work/venv_sam3/bin/python bench/fidelity/fidelity.py [--threads 2] [--prompt liver]``
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import resource
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from medsam3_core import checkpoints  # noqa: E402  (needs the repo on sys.path first)
from medsam3_core.convert import native_to_transformers  # noqa: E402
from medsam3_core.tokenizer import BPE_PATH, bundled_tokenizer, tokenize  # noqa: E402

MANIFEST = REPO / "Testing" / "data" / "sam3_native_keys.json.gz"
RESULTS = Path(__file__).with_name("RESULTS.md")
SEED = 1234
IMAGE_SIZE = 1008


def patch_native_for_cpu() -> None:
    """Make Meta's code CPU-safe: two constructors hard-code ``device="cuda"`` (SAM3_NOTES §7), and the geometry
    encoder pins host memory (which needs a CUDA driver) even for an empty box prompt."""
    import sam3.model.decoder as decoder
    import sam3.model.position_encoding as position_encoding

    original_init = position_encoding.PositionEmbeddingSine.__init__

    def init_without_precompute(self, *args, precompute_resolution=None, **kwargs):
        original_init(self, *args, precompute_resolution=None, **kwargs)

    position_encoding.PositionEmbeddingSine.__init__ = init_without_precompute
    original_coords = decoder.TransformerDecoder._get_coords

    def coords_on_cpu(height, width, device):
        return original_coords(height, width, "cpu" if str(device).startswith("cuda") else device)

    decoder.TransformerDecoder._get_coords = staticmethod(coords_on_cpu)
    if not torch.cuda.is_available():
        torch.Tensor.pin_memory = lambda self, *args, **kwargs: self


def versions() -> dict[str, str]:
    names = ("torch", "torchvision", "transformers", "sam3", "safetensors", "numpy")
    found = {name: metadata.version(name) for name in names}
    found["python"] = platform.python_version()
    return found


def write_manifest() -> dict[str, int]:
    """Record name → shape of every tensor in Meta's ``sam3.pt`` layout (``detector.*`` + ``tracker.*``)."""
    from sam3.model_builder import build_sam3_video_model

    model = build_sam3_video_model(load_from_HF=False, bpe_path=str(BPE_PATH), device="cpu")
    keys = {name: list(t.shape) for name, t in model.state_dict().items()}
    data = {"source": "sam3 build_sam3_video_model (state_dict of sam3.pt)", "versions": versions(), "keys": keys}
    MANIFEST.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(MANIFEST, "wt", encoding="utf-8") as handle:
        json.dump(data, handle, indent=0, sort_keys=True)
    del model
    return {"tensors": len(keys), "parameters": sum(int(torch.Size(s).numel()) for s in keys.values())}


def test_image() -> torch.Tensor:
    """A deterministic 1×3×1008×1008 image in SAM3's input range [-1, 1]: gradients, a bright disc, noise."""
    gen = torch.Generator().manual_seed(SEED)
    axis = torch.linspace(-1, 1, IMAGE_SIZE)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    disc = ((xx - 0.2) ** 2 + (yy + 0.1) ** 2 < 0.15).float()
    base = torch.stack([0.5 * xx, 0.5 * yy, disc - 0.5])
    return (base + 0.05 * torch.randn(base.shape, generator=gen)).clamp(-1, 1).unsqueeze(0)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def native_detector(prompt: str, pixels: torch.Tensor):
    """Meta's image model (seeded random weights), its outputs, its state_dict, and the forward time."""
    from sam3.model.data_misc import FindStage
    from sam3.model_builder import build_sam3_image_model

    torch.manual_seed(SEED)
    model = build_sam3_image_model(bpe_path=str(BPE_PATH), device="cpu", load_from_HF=False).eval()
    find = FindStage(
        img_ids=torch.tensor([0]), text_ids=torch.tensor([0]), input_boxes=None, input_boxes_mask=None,
        input_boxes_label=None, input_points=None, input_points_mask=None,
    )
    start = time.perf_counter()
    with torch.inference_mode():
        backbone_out = model.backbone.forward_image(pixels)
        backbone_out.update(model.backbone.forward_text([prompt], device="cpu"))
        out = model.forward_grounding(
            backbone_out=backbone_out, find_input=find, find_target=None, geometric_prompt=model._get_dummy_prompt()
        )
    seconds = time.perf_counter() - start
    result = {
        "class logits": out["pred_logits"].reshape(1, -1),
        "presence logit": out["presence_logit_dec"].reshape(1, -1),
        "boxes (xyxy)": cxcywh_to_xyxy(out["pred_boxes"]),
        "mask logits": out["pred_masks"],
        "semantic logits": out.get("semantic_seg"),
    }
    return result, model.state_dict(), seconds


def transformers_detector(state: dict, prompt: str, pixels: torch.Tensor):
    """Our conversion of ``state`` loaded into transformers' Sam3Model, its outputs and the forward time."""
    from transformers import Sam3Config

    config = Sam3Config()
    conversion = native_to_transformers(state, config)
    model = checkpoints.instantiate(config, conversion.state_dict, torch.float32, source="native image model")
    ids, mask = tokenize(bundled_tokenizer(), [prompt])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model(pixel_values=pixels, input_ids=ids, attention_mask=mask)
    seconds = time.perf_counter() - start
    result = {
        "class logits": out.pred_logits,
        "presence logit": out.presence_logits,
        "boxes (xyxy)": out.pred_boxes,
        "mask logits": out.pred_masks,
        "semantic logits": out.semantic_seg,
    }
    return result, conversion, seconds


def compare(native: dict, ours: dict) -> list[tuple[str, str, float, float]]:
    rows = []
    for name, ref in native.items():
        if ref is None:
            continue
        got = ours[name]
        if tuple(ref.shape) != tuple(got.shape):
            raise SystemExit(f"{name}: shape {tuple(ref.shape)} (native) vs {tuple(got.shape)} (ours)")
        diff = (ref.float() - got.float()).abs().max().item()
        rows.append((name, "×".join(map(str, ref.shape)), diff, ref.float().abs().max().item()))
    return rows


def write_results(info: dict) -> None:
    lines = [
        "# Fidelity of the native → transformers conversion",
        "",
        "Produced by `bench/fidelity/fidelity.py` (not CI). Meta's full-size SAM3 image model is built with random",
        f"weights (seed {SEED}), converted with `medsam3_core.convert.native_to_transformers`, loaded through",
        "`medsam3_core.checkpoints.instantiate`, and both run on the same synthetic 1008×1008 image and the text",
        f"prompt {info['prompt']!r}, float32 on CPU ({info['threads']} threads).",
        "",
        "| output | shape | max abs diff | max abs value |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {s} | {d:.3g} | {v:.3g} |" for n, s, d, v in info["rows"]]
    worst = max(d for _, _, d, _ in info["rows"])
    lines += [
        "",
        f"Largest difference: **{worst:.3g}** (goal < 1e-3). "
        f"Native forward {info['native_s']:.1f} s, transformers forward {info['ours_s']:.1f} s; "
        f"peak RSS {info['peak_gb']:.1f} GB.",
        "",
        "## Key coverage",
        "",
        f"- Native `sam3.pt` layout (video model, detector + tracker): {info['manifest']['tensors']} tensors, "
        f"{info['manifest']['parameters']:,} values; manifest in `Testing/data/sam3_native_keys.json.gz`.",
        f"- Image model converted: {len(info['conversion'].state_dict)} transformers tensors filled, "
        f"{len(info['conversion'].dropped)} native tensors dropped on purpose (RoPE tables, point-prompt "
        f"projections), {len(info['conversion'].unmapped)} unmapped.",
        "",
        "## Versions",
        "",
        *[f"- {k}: {v}" for k, v in info["versions"].items()],
        "",
    ]
    RESULTS.write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", default="liver")
    parser.add_argument("--skip-manifest", action="store_true", help="keep the existing key manifest")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    patch_native_for_cpu()

    manifest = {"tensors": 0, "parameters": 0}
    if args.skip_manifest:
        with gzip.open(MANIFEST, "rt", encoding="utf-8") as handle:
            keys = json.load(handle)["keys"]
        manifest = {"tensors": len(keys), "parameters": sum(int(torch.Size(s).numel()) for s in keys.values())}
    else:
        manifest = write_manifest()
    print(f"manifest: {manifest}", flush=True)

    pixels = test_image()
    native_out, state, native_s = native_detector(args.prompt, pixels)
    print(f"native forward {native_s:.1f} s", flush=True)
    ours_out, conversion, ours_s = transformers_detector(state, args.prompt, pixels)
    print(f"transformers forward {ours_s:.1f} s", flush=True)
    rows = compare(native_out, ours_out)
    for row in rows:
        print("%-16s %-14s max|diff| %.3g  max|value| %.3g" % row, flush=True)
    write_results({
        "prompt": args.prompt, "threads": args.threads, "rows": rows, "native_s": native_s, "ours_s": ours_s,
        "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "manifest": manifest,
        "conversion": conversion, "versions": versions(),
    })
    print(f"wrote {RESULTS}", flush=True)


if __name__ == "__main__":
    main()
