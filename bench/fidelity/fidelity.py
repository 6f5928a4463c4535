"""Fidelity proof: our native→transformers conversion reproduces Meta's SAM3 numerically (not part of CI).

Runs in the separate environment made by ``setup_venv.sh`` (Meta's ``sam3`` wheel + torchvision), on CPU:

1. builds Meta's full-size SAM3 video model (detector + tracker) with random weights and records every parameter
   name and shape into ``Testing/data/sam3_native_keys.json.gz`` — the manifest CI checks conversion coverage with;
2. builds Meta's full-size image model with a fixed seed, converts its ``state_dict`` with
   :func:`medsam3_core.model.convert.native_to_transformers`, loads it into transformers' ``Sam3Model`` through
   :func:`medsam3_core.model.checkpoints.instantiate` (the path every real checkpoint takes), runs both on the same
   1008×1008 image and text prompt, and reports the largest absolute differences of class logits, presence,
   boxes and mask logits — once as transformers runs a text prompt, once with the geometry-encoder CLS token
   Meta's model always adds (:func:`medsam3_core.model.bundle.append_geometry_cls`);
3. runs one memory-tracking step through Meta's tracker and through transformers' tracker loaded with the
   converted weights, stage by stage on identical inputs;
4. writes the figures and versions to ``bench/fidelity/results.json`` and ``bench/fidelity/RESULTS.md``.

Random weights are as good as trained ones for this purpose (every layer participates, the tensors are generic),
and need no download. Costs on a 2-core CPU: ≈4.5 GB RAM per model and ≈1 min per full-size forward.

Usage: ``VENV/bin/python bench/fidelity/fidelity.py [--threads 2] [--image-size 1008|504] [--parts manifest detector
tracker]`` (``VENV`` made by ``setup_venv.sh``). ``--image-size 504`` checks the detector and the tracker at the
size the Medical SAM3 3D release was trained at; each size's figures are kept side by side.
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
from typing import Optional

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from medsam3_core.model import checkpoints  # noqa: E402  (needs the repo on sys.path first)
from medsam3_core.model.convert import native_to_transformers  # noqa: E402
from medsam3_core.model.bundle import append_geometry_cls  # noqa: E402
from medsam3_core.model.image_size import with_image_size  # noqa: E402
from medsam3_core.model.tokenizer import BPE_PATH, bundled_tokenizer, tokenize  # noqa: E402

MANIFEST = REPO / "Testing" / "data" / "sam3_native_keys.json.gz"
RESULTS = Path(__file__).with_name("RESULTS.md")
RESULTS_JSON = Path(__file__).with_name("results.json")
SEED = 1234
#: SAM3's own input size; ``--image-size 504`` checks the size the Medical SAM3 3D release was trained at, where the
#: 36 × 36 patch grid is not a multiple of the ViT's 24-patch window and the windowed layers pad.
IMAGE_SIZE = 1008


def patch_native_for_cpu() -> None:
    """Make Meta's code CPU-safe: two constructors hard-code ``device="cuda"``, and the geometry
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


def native_at_image_size(size: int) -> None:
    """Build Meta's ViT for ``size`` px: its builder hard-codes 1008, and the ViT precomputes its global layers'
    rotary tables for the size it is built with (the decoder's box-bias coordinates follow the features by
    themselves)."""
    import sam3.model_builder as builder
    from sam3.model.vitdet import ViT

    def vit_at_size(*args, **kwargs):
        kwargs["img_size"] = size
        return ViT(*args, **kwargs)

    builder.ViT = vit_at_size


def native_tracker_at_image_size(size: int) -> None:
    """Build Meta's tracker for ``size`` px. Its builder hard-codes 1008 for the tracker, and its memory encoder
    resizes every mask to a fixed 1152 × 1152 (16 × the 72-patch grid) before downsampling it 16×, which only matches
    the image features at 1008 px: at 504 the mask must be 576 × 576 (16 × 36), which is what transformers derives
    from the configured image size by itself. (Its memory attention recomputes its RoPE for any feature size.)"""
    import sam3.model_builder as builder
    from sam3.model.memory import SimpleMaskDownSampler
    from sam3.model.sam3_tracking_predictor import Sam3TrackerPredictor

    def predictor_at_size(*args, **kwargs):
        kwargs["image_size"] = size
        return Sam3TrackerPredictor(*args, **kwargs)

    def downsampler_at_size(*args, **kwargs):
        kwargs["interpol_size"] = [16 * (size // 14)] * 2
        return SimpleMaskDownSampler(*args, **kwargs)

    builder.Sam3TrackerPredictor = predictor_at_size
    builder.SimpleMaskDownSampler = downsampler_at_size


def test_image(size: int = IMAGE_SIZE) -> torch.Tensor:
    """A deterministic 1×3×size×size image in SAM3's input range [-1, 1]: gradients, a bright disc, noise."""
    gen = torch.Generator().manual_seed(SEED)
    axis = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    disc = ((xx - 0.2) ** 2 + (yy + 0.1) ** 2 < 0.15).float()
    base = torch.stack([0.5 * xx, 0.5 * yy, disc - 0.5])
    return (base + 0.05 * torch.randn(base.shape, generator=gen)).clamp(-1, 1).unsqueeze(0)


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def fill_uninitialised(model: torch.nn.Module) -> list[str]:
    """Give parameters Meta leaves as ``torch.empty`` (real weights always overwrite them) seeded N(0, 0.02) values.

    Without this the text encoder's ``positional_embedding`` and ``text_projection`` hold whatever memory held —
    non-finite or ~1e38 values — and every output is NaN.
    """
    gen = torch.Generator().manual_seed(SEED)
    filled = []
    with torch.no_grad():
        for name, param in model.named_parameters():
            if not torch.isfinite(param).all() or param.abs().max() > 1e3:
                param.copy_(0.02 * torch.randn(param.shape, generator=gen))
                filled.append(name)
    return filled


def native_detector(prompt: str, pixels: torch.Tensor):
    """Meta's image model (seeded random weights), its outputs, its state_dict, and the forward time."""
    from sam3.model.data_misc import FindStage
    from sam3.model_builder import build_sam3_image_model

    torch.manual_seed(SEED)
    model = build_sam3_image_model(bpe_path=str(BPE_PATH), device="cpu", load_from_HF=False).eval()
    print("filled uninitialised native tensors:", fill_uninitialised(model), flush=True)
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
    """Our conversion of ``state`` in transformers' Sam3Model (built for the image's size, as ``medsam3 convert
    --image-size`` does): outputs as transformers runs a text prompt, outputs with Meta's geometry CLS token appended
    (:func:`medsam3_core.model.bundle.append_geometry_cls`), the conversion, and the time of one full forward."""
    from transformers import Sam3Config

    config = with_image_size(Sam3Config(), int(pixels.shape[-1]))
    conversion = native_to_transformers(state, config)
    model = checkpoints.instantiate(config, conversion.state_dict, torch.float32, source="native image model")
    ids, mask = tokenize(bundled_tokenizer(), [prompt])
    start = time.perf_counter()
    with torch.inference_mode():
        vision = model.get_vision_features(pixel_values=pixels)
        text = model.get_text_features(input_ids=ids, attention_mask=mask, return_dict=True)
        plain = model(vision_embeds=vision, text_embeds=text, attention_mask=mask)
        seconds = time.perf_counter() - start
        text_cls, mask_cls = append_geometry_cls(model, vision, text, mask)
        with_cls = model(vision_embeds=vision, text_embeds=text_cls, attention_mask=mask_cls)
    outputs = [
        {
            "class logits": out.pred_logits,
            "presence logit": out.presence_logits,
            "boxes (xyxy)": out.pred_boxes,
            "mask logits": out.pred_masks,
            "semantic logits": out.semantic_seg,
        }
        for out in (plain, with_cls)
    ]
    return outputs[0], outputs[1], conversion, seconds


def tracker_step(seed: int = SEED, size: int = IMAGE_SIZE) -> list[tuple[str, str, float, float]]:
    """One memory-tracking step through Meta's tracker and through ours, converted, on identical inputs.

    A propagation step is: encode the previous slice's mask into memory (memory encoder), condition the current
    slice's features on that memory plus object pointers (memory attention), decode the mask with no new prompt
    (prompt encoder + SAM mask decoder), and project the object pointer. Each stage gets the same random inputs on
    both sides, so a wrong name or reshape anywhere shows up as a large difference in its row.
    """
    from sam3.model_builder import build_tracker
    from transformers import Sam3TrackerVideoModel, Sam3VideoConfig

    if size != IMAGE_SIZE:
        native_tracker_at_image_size(size)
    torch.manual_seed(seed)
    native = build_tracker(apply_temporal_disambiguation=False).eval()
    fill_uninitialised(native)
    state = {"tracker." + k: v for k, v in native.state_dict().items()}
    converted = native_to_transformers(state, Sam3VideoConfig()).state_dict
    tracker_config = with_image_size(Sam3VideoConfig(), size).tracker_config
    ours = Sam3TrackerVideoModel(tracker_config, remove_vision_encoder=True).eval()
    ours.load_state_dict({k[len("tracker_model."):]: v for k, v in converted.items()}, strict=True)

    gen = torch.Generator().manual_seed(seed)
    side, channels = size // 14, 256
    pix = torch.randn(1, channels, side, side, generator=gen)
    mask_probs = torch.rand(1, 1, 16 * side, 16 * side, generator=gen)  # the size the mask downsampler expects
    current = torch.randn(side * side, 1, channels, generator=gen)
    current_pos = torch.randn(side * side, 1, channels, generator=gen)
    pointers = torch.randn(4, 1, 64, generator=gen)
    high_res = [torch.randn(1, 32, 4 * side, 4 * side, generator=gen),
                torch.randn(1, 64, 2 * side, 2 * side, generator=gen)]
    rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with torch.inference_mode():
        n_mem = native.maskmem_backbone(pix, mask_probs, skip_mask_sigmoid=True)
        o_mem, o_pos = ours.memory_encoder(pix, mask_probs)
        rows["memory features"] = (n_mem["vision_features"], o_mem)
        rows["memory position enc."] = (n_mem["vision_pos_enc"][0], o_pos)

        memory = torch.cat([o_mem.flatten(2).permute(2, 0, 1), pointers])
        memory_pos = torch.cat([o_pos.flatten(2).permute(2, 0, 1), torch.zeros_like(pointers)])
        n_cond = native.transformer.encoder(
            src=[current], src_key_padding_mask=[None], src_pos=[current_pos], prompt=memory, prompt_pos=memory_pos,
            prompt_key_padding_mask=None, feat_sizes=[(side, side)], num_obj_ptr_tokens=4,
        )["memory"]
        o_cond = ours.memory_attention(
            current_vision_features=current, memory=memory, current_vision_position_embeddings=current_pos,
            memory_posision_embeddings=memory_pos, num_object_pointer_tokens=4,
        )
        rows["memory attention"] = (n_cond.permute(1, 2, 0).reshape(1, channels, side, side),
                                    o_cond.squeeze(1).transpose(1, 2).reshape(1, channels, side, side))

        image = rows["memory attention"][1]
        sparse, dense = native.sam_prompt_encoder(
            points=(torch.zeros(1, 1, 2), -torch.ones(1, 1, dtype=torch.int32)), boxes=None, masks=None
        )
        n_masks, n_iou, n_tokens, n_obj = native.sam_mask_decoder(
            image_embeddings=image, image_pe=native.sam_prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=True, repeat_image=False, high_res_features=high_res,
        )
        sparse, dense = ours.prompt_encoder(
            input_points=torch.zeros(1, 1, 1, 2), input_labels=-torch.ones(1, 1, 1, dtype=torch.int32),
            input_boxes=None, input_masks=None,
        )
        o_masks, o_iou, o_tokens, o_obj = ours.mask_decoder(
            image_embeddings=image, image_positional_embeddings=ours.get_image_wide_positional_embeddings(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
            high_resolution_features=high_res,
        )
        rows["SAM mask logits"] = (n_masks, o_masks.reshape(n_masks.shape))
        rows["SAM IoU scores"] = (n_iou, o_iou.reshape(n_iou.shape))
        rows["object score"] = (n_obj, o_obj.reshape(n_obj.shape))
        rows["object pointer"] = (native.obj_ptr_proj(n_tokens[:, 0]),
                                  ours.object_pointer_proj(o_tokens[:, :, 0]).reshape(1, -1))
    return [
        (name, "×".join(map(str, ref.shape)), (ref - got).abs().max().item(), ref.abs().max().item())
        for name, (ref, got) in rows.items()
    ]


def compare(native: dict, plain: dict, with_cls: dict) -> list[tuple[str, str, float, float, float]]:
    """Per output: shape, max |diff| as transformers runs it, max |diff| with the CLS token, max |native value|."""
    rows = []
    for name, ref in native.items():
        if ref is None:
            continue
        diffs = []
        for ours in (plain, with_cls):
            got = ours[name]
            if tuple(ref.shape) != tuple(got.shape):
                raise SystemExit(f"{name}: shape {tuple(ref.shape)} (native) vs {tuple(got.shape)} (ours)")
            diffs.append((ref.float() - got.float()).abs().max().item())
        rows.append((name, "×".join(map(str, ref.shape)), *diffs, ref.float().abs().max().item()))
    return rows


def _table(rows: list) -> list[str]:
    """Markdown rows for (name, shape, max |diff|, max |value|) tuples."""
    lines = ["| output | shape | max abs diff | max abs value |", "|---|---|---|---|"]
    return lines + [f"| {n} | {shape} | {d:.3g} | {v:.3g} |" for n, shape, d, v in rows]


def _detector_section(det: Optional[dict], size: int) -> list[str]:
    """The markdown of one detector comparison (``size`` px), or nothing when it was not measured."""
    if not det:
        return []
    worst = max(row[3] for row in det["rows"])
    padding = []
    if size % (14 * 24):
        grid = size // 14
        padded = -(-grid // 24) * 24
        padding = [
            f"At {size} px the ViT sees {grid} × {grid} patches, not a multiple of its 24-patch attention window: both",
            f"implementations pad the windowed layers' input with zeros (after the layer norm) to {padded} × {padded}",
            "and attend over the padded windows unmasked; the global layers' rotary positions are scaled by 24 / "
            f"{grid} in both.",
            "",
        ]
    return [
        f"## Detector (image model): one {size}×{size} image, one text prompt",
        "",
        *padding,
        f"Prompt {det['prompt']!r}; weights loaded through `medsam3_core.model.checkpoints.instantiate`",
        "(the path every real checkpoint takes); transformers tokenised with our bundled CLIP tokenizer, Meta with its",
        "own.",
        "Meta's model always runs its geometry encoder and appends its CLS token to the text prompt;",
        "transformers' `Sam3Model` skips that encoder for text-only prompts. Column *text only* is transformers",
        "as is; column *+ geometry CLS* appends the token with `medsam3_core.model.bundle.append_geometry_cls`.",
        "",
        "| output | shape | max abs diff, text only | max abs diff, + geometry CLS | max abs value |",
        "|---|---|---|---|---|",
        *[f"| {n} | {shape} | {a:.3g} | {b:.3g} | {v:.3g} |" for n, shape, a, b, v in det["rows"]],
        "",
        f"Largest difference with the CLS token **{worst:.3g}**. Native forward {det['native_s']:.0f} s, "
        f"transformers forward {det['ours_s']:.0f} s ({det['threads']} thread(s), machine shared with other jobs).",
        f"Conversion: {det['filled']} transformers tensors filled, {det['dropped']} native tensors dropped on "
        f"purpose (RoPE tables, point-prompt projections), {det['unmapped']} unmapped.",
        "(Boxes agree exactly either way: the box head's last layer starts at zero, so random-init boxes are the",
        "reference boxes.)",
        "",
    ]


def _tracker_section(trk: Optional[dict], size: int) -> list[str]:
    """The markdown of one tracker comparison (features of a ``size``-px image), or nothing when not measured."""
    if not trk:
        return []
    worst = max(row[2] for row in trk["rows"])
    grid = size // 14
    resized = [] if size == IMAGE_SIZE else [
        "Meta's memory encoder resizes every mask to a fixed 1152 × 1152 before its 16× downsampling, which matches",
        f"the image features only at 1008 px; at {size} px it must be built for {16 * grid} × {16 * grid} "
        f"(16 × {grid}), or it fails on mismatched sizes. transformers derives that size from the configured image",
        "size by itself.",
        "",
    ]
    return [
        "## Tracker: one propagation step" + ("" if size == IMAGE_SIZE else f", {size}-px image ({grid} × {grid} "
                                               "features)"),
        "",
        *resized,
        "Meta's tracker weights converted and loaded strictly into transformers' `Sam3TrackerVideoModel`; memory",
        "encoder → memory attention (with 4 object-pointer tokens) → prompt encoder + SAM mask decoder (no new",
        "prompt, 3 masks) → object pointer, each stage fed the same random inputs.",
        "",
        *_table(trk["rows"]),
        "",
        f"Largest difference **{worst:.3g}** ({trk['seconds']:.0f} s).",
        "",
    ]


def write_results(results: dict) -> None:
    """Render ``RESULTS.md`` from everything measured so far (parts may come from separate runs)."""
    lines = [
        "# Fidelity of the native → transformers conversion",
        "",
        "Produced by `bench/fidelity/fidelity.py` (not CI), float32 on a shared 2-core CPU. Meta's full-size SAM3",
        f"models are built with random weights (seed {SEED}; the two text-encoder tensors Meta leaves uninitialised",
        "get N(0, 0.02) values), converted with `medsam3_core.model.convert`, and both implementations run on",
        "identical inputs. Goal: every difference < 1e-3.",
        "",
    ]
    for key in ("detector", "detector_504"):
        lines += _detector_section(results.get(key), 504 if key.endswith("504") else 1008)
    for key in ("tracker", "tracker_504"):
        lines += _tracker_section(results.get(key), 504 if key.endswith("504") else 1008)
    man = results.get("manifest")
    if man:
        lines += [
            "## Key manifest",
            "",
            f"Meta's `sam3.pt` layout (video model: detector + tracker): {man['tensors']} tensors, "
            f"{man['parameters']:,} values, recorded in `Testing/data/sam3_native_keys.json.gz`; CI converts it",
            "(as meta tensors) and checks every parameter of transformers' full-size `Sam3VideoModel` gets filled.",
            "",
        ]
    lines += ["## Versions", "", *[f"- {k}: {v}" for k, v in results["versions"].items()], ""]
    RESULTS.write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt", default="liver")
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE, choices=(IMAGE_SIZE, 504),
                        help="input size of the detector and tracker checks: 1008 (SAM3) or 504 (the Medical SAM3 "
                             "3D release)")
    parser.add_argument("--parts", nargs="+", choices=("manifest", "detector", "tracker"),
                        default=["manifest", "detector", "tracker"], help="what to (re)measure; the rest is kept")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    patch_native_for_cpu()
    results = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.is_file() else {}
    results["versions"] = versions()

    if "manifest" in args.parts:
        results["manifest"] = write_manifest()
        print(f"manifest: {results['manifest']}", flush=True)
    if "detector" in args.parts:
        if args.image_size != IMAGE_SIZE:
            native_at_image_size(args.image_size)
        pixels = test_image(args.image_size)
        native_out, state, native_s = native_detector(args.prompt, pixels)
        print(f"native forward {native_s:.1f} s", flush=True)
        plain_out, cls_out, conversion, ours_s = transformers_detector(state, args.prompt, pixels)
        print(f"transformers forward {ours_s:.1f} s", flush=True)
        results["detector" if args.image_size == IMAGE_SIZE else f"detector_{args.image_size}"] = {
            "prompt": args.prompt, "threads": args.threads, "rows": compare(native_out, plain_out, cls_out),
            "native_s": native_s, "ours_s": ours_s, "filled": len(conversion.state_dict),
            "dropped": len(conversion.dropped), "unmapped": len(conversion.unmapped),
        }
        del native_out, state, plain_out, cls_out, conversion
    if "tracker" in args.parts:
        start = time.perf_counter()
        key = "tracker" if args.image_size == IMAGE_SIZE else f"tracker_{args.image_size}"
        results[key] = {"rows": tracker_step(size=args.image_size), "seconds": time.perf_counter() - start}
    for part in ("detector", "detector_504", "tracker", "tracker_504"):
        for row in results.get(part, {}).get("rows", []):
            print(part, *[f"{x:.3g}" if isinstance(x, float) else x for x in row], flush=True)
    results["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    RESULTS_JSON.write_text(json.dumps(results, indent=1), encoding="utf-8")
    write_results(results)
    print(f"wrote {RESULTS}", flush=True)


if __name__ == "__main__":
    main()
