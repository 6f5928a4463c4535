"""Native SAM3 ⇄ transformers parameter names, and ``medsam3 convert``.

Meta's ``sam3.pt`` and Medical SAM3's trainer checkpoints name parameters after Meta's modules (``detector.*`` and
``tracker.*``); transformers' ``Sam3VideoModel`` / ``Sam3Model`` use other module names and split some tensors
differently. The mapping is one table of :class:`Rule` s — pairs of name templates, read in both directions — plus
four tensor reshapes, each a fact about the two implementations (found by comparing their state dicts):

- fused attention projections (``attn.qkv``, ``in_proj_weight``) are split into ``q_proj/k_proj/v_proj``;
- the ViT position embedding drops its class-token row (577 → 576 positions);
- CLIP's ``text_projection`` matrix is stored transposed (``x @ P`` natively, ``nn.Linear`` in transformers);
- the tracker prompt encoder's four point-embedding rows are one ``(4, C)`` table in transformers, and its random
  Fourier matrix feeds two transformers buffers.

Because the table is symmetric, :func:`transformers_to_native` exports fine-tuned weights back to Meta's format and
lets tests fabricate native checkpoints from tiny transformers models. :func:`convert_checkpoint` (also
``medsam3 convert IN.pt OUT_DIR [--lora ADAPTER]``) writes a weights-only transformers folder and refuses to when
any parameter of the target architecture would be left at random initialisation.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import torch
from transformers import PretrainedConfig, Sam3Config, Sam3VideoConfig

from medsam3_core.model import checkpoints
from medsam3_core.model.checkpoints import Layout
from medsam3_core.errors import CheckpointError, MedSam3Error
from medsam3_core.io.outputs import check_output_folder
from medsam3_core.model.image_size import config_image_size, with_image_size
from medsam3_core.model.lora import merge_lora
from medsam3_core.model.tokenizer import load_tokenizer

__all__ = [
    "Rule",
    "RULES",
    "DROPPED_NATIVE",
    "Conversion",
    "native_to_transformers",
    "transformers_to_native",
    "config_for_checkpoint",
    "merge_lora",
    "release_defaults",
    "convert_checkpoint",
    "add_arguments",
    "run",
]

_QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Rule:
    """One native ⇄ transformers name correspondence.

    Templates are full parameter names in which ``{i}`` / ``{j}`` stand for layer numbers, ``{p}`` for the leaf
    (``weight``, ``bias`` …) and ``{qkv}`` (transformers side of a ``split`` rule) for ``q``/``k``/``v``.

    Attributes:
        native, hf: the two templates (``hf`` may be a tuple when one native tensor feeds several parameters).
        op: tensor reshape on the way to transformers: ``split`` (fused q/k/v → three), ``transpose``,
            ``drop_cls`` (remove the class-token position), ``stack`` (rows ``{i}`` → one table) or ``None``.
    """

    native: str
    hf: Union[str, tuple[str, ...]]
    op: Optional[str] = None

    @property
    def targets(self) -> tuple[str, ...]:
        return self.hf if isinstance(self.hf, tuple) else (self.hf,)


_FIELD = {"i": r"(?P<i>\d+)", "j": r"(?P<j>\d+)", "p": r"(?P<p>[A-Za-z0-9_.]+)", "qkv": r"(?P<qkv>[qkv])"}


def _regex(template: str) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    out = []
    for n, part in enumerate(parts):
        out.append(_FIELD[part] if n % 2 else re.escape(part))
    return re.compile("".join(out))


# --- rule builders (keep the table below readable) ----------------------------------------------------------------


def _same(native: str, hf: str) -> Rule:
    """A module renamed as a whole: every parameter below it keeps its leaf name."""
    return Rule(native + "{p}", hf + "{p}")


def _attention(native: str, hf: str, out: str = "o_proj", fused: bool = True) -> list[Rule]:
    """An attention block: q/k/v (fused ``in_proj`` natively in ``nn.MultiheadAttention``), ``out_proj`` → ``out``."""
    qkv = Rule(native + "in_proj_{p}", hf + "{qkv}_proj.{p}", "split") if fused else _same(native, hf)
    return [Rule(native + "out_proj.{p}", hf + out + ".{p}"), qkv]


def _mlp(native: str, hf: str, names: Sequence[str]) -> list[Rule]:
    """Native ``layers.<n>`` of a small MLP → the transformers layer names, in order."""
    return [_same(f"{native}layers.{n}.", f"{hf}{name}.") for n, name in enumerate(names)]


def _fpn(native: str, hf: str) -> list[Rule]:
    """One FPN level of the ViT neck (``convs.N`` natively, ``fpn_layers.N`` in transformers)."""
    scale = {"dconv_2x2_0": "scale_layers.0", "dconv_2x2_1": "scale_layers.2", "dconv_2x2": "scale_layers.0"}
    rules = [_same(f"{native}{{i}}.{a}.", f"{hf}{{i}}.{b}.") for a, b in scale.items()]
    rules += [_same(f"{native}{{i}}.conv_1x1.", f"{hf}{{i}}.proj1.")]
    rules += [_same(f"{native}{{i}}.conv_3x3.", f"{hf}{{i}}.proj2.")]
    return rules


def _encoder_layer(
    native: str, hf: str, attn: Mapping[str, str], norms: Mapping[str, str], mlp: str, fused: bool = True
) -> list[Rule]:
    """A DETR-style transformer layer: attention blocks, ``linear1/2`` feed-forward, numbered norms."""
    rules: list[Rule] = []
    for a, b in attn.items():
        rules += _attention(f"{native}{a}.", f"{hf}{b}.", fused=fused)
    rules += [_same(f"{native}{a}.", f"{hf}{b}.") for a, b in norms.items()]
    rules += [_same(f"{native}linear1.", f"{hf}{mlp}1."), _same(f"{native}linear2.", f"{hf}{mlp}2.")]
    return rules


# --- the table ------------------------------------------------------------------------------------------------------

_D, _DM = "detector.", "detector_model."
_VIT, _HVIT = _D + "backbone.vision_backbone.trunk.", _DM + "vision_encoder.backbone."
_TXT, _HTXT = _D + "backbone.language_backbone.encoder.", _DM + "text_encoder."
_DEC, _HDEC = _D + "transformer.decoder.", _DM + "detr_decoder."
_SEG, _HSEG = _D + "segmentation_head.", _DM + "mask_decoder."
_GEO, _HGEO = _D + "geometry_encoder.", _DM + "geometry_encoder."
_T, _TM = "tracker.", "tracker_model."
_MD, _HMD = _T + "sam_mask_decoder.", _TM + "mask_decoder."
_PE, _HPE = _T + "sam_prompt_encoder.", _TM + "prompt_encoder."
_MEM, _HMEM = _T + "maskmem_backbone.", _TM + "memory_encoder."
_MLP3 = ("proj_in", "layers.0", "proj_out")  # transformers' 3-layer MLP naming in the tracker

_DETECTOR_RULES: list[Rule] = [
    # Perception-encoder ViT
    Rule(_VIT + "pos_embed", _HVIT + "embeddings.position_embeddings", "drop_cls"),
    _same(_VIT + "patch_embed.proj.", _HVIT + "embeddings.patch_embeddings.projection."),
    _same(_VIT + "ln_pre.", _HVIT + "layer_norm."),
    Rule(_VIT + "blocks.{i}.attn.qkv.{p}", _HVIT + "layers.{i}.attention.{qkv}_proj.{p}", "split"),
    _same(_VIT + "blocks.{i}.attn.proj.", _HVIT + "layers.{i}.attention.o_proj."),
    _same(_VIT + "blocks.{i}.norm1.", _HVIT + "layers.{i}.layer_norm1."),
    _same(_VIT + "blocks.{i}.norm2.", _HVIT + "layers.{i}.layer_norm2."),
    _same(_VIT + "blocks.{i}.mlp.", _HVIT + "layers.{i}.mlp."),
    # FPN necks: the detector's, and the tracker's (``sam2_convs``; a top-level module in Sam3VideoModel)
    *_fpn(_D + "backbone.vision_backbone.convs.", _DM + "vision_encoder.neck.fpn_layers."),
    *_fpn(_D + "backbone.vision_backbone.sam2_convs.", "tracker_neck.fpn_layers."),
    # CLIP text encoder and the 1024 → 256 resizer
    _same(_TXT + "token_embedding.", _HTXT + "text_model.embeddings.token_embedding."),
    Rule(_TXT + "positional_embedding", _HTXT + "text_model.embeddings.position_embedding.weight"),
    _same(_TXT + "ln_final.", _HTXT + "text_model.final_layer_norm."),
    Rule(_TXT + "text_projection", _HTXT + "text_projection.weight", "transpose"),
    *_attention(
        _TXT + "transformer.resblocks.{i}.attn.", _HTXT + "text_model.encoder.layers.{i}.self_attn.", "out_proj"
    ),
    _same(_TXT + "transformer.resblocks.{i}.ln_1.", _HTXT + "text_model.encoder.layers.{i}.layer_norm1."),
    _same(_TXT + "transformer.resblocks.{i}.ln_2.", _HTXT + "text_model.encoder.layers.{i}.layer_norm2."),
    _same(_TXT + "transformer.resblocks.{i}.mlp.c_fc.", _HTXT + "text_model.encoder.layers.{i}.mlp.fc1."),
    _same(_TXT + "transformer.resblocks.{i}.mlp.c_proj.", _HTXT + "text_model.encoder.layers.{i}.mlp.fc2."),
    _same(_D + "backbone.language_backbone.resizer.", _DM + "text_projection."),
    # Geometry (box prompt) encoder
    *_encoder_layer(
        _GEO + "encode.{i}.", _HGEO + "layers.{i}.", {"self_attn": "self_attn", "cross_attn_image": "cross_attn"},
        {"norm1": "layer_norm1", "norm2": "layer_norm2", "norm3": "layer_norm3"}, "mlp.fc",
    ),
    _same(_GEO + "img_pre_norm.", _HGEO + "vision_layer_norm."),
    _same(_GEO + "encode_norm.", _HGEO + "output_layer_norm."),
    _same(_GEO + "norm.", _HGEO + "prompt_layer_norm."),
    *[_same(f"{_GEO}{m}.", f"{_HGEO}{m}.") for m in (
        "boxes_direct_project", "boxes_pool_project", "boxes_pos_enc_project", "cls_embed", "label_embed", "final_proj"
    )],
    # DETR encoder (image ⇄ text fusion)
    *_encoder_layer(
        _D + "transformer.encoder.layers.{i}.", _DM + "detr_encoder.layers.{i}.",
        {"self_attn": "self_attn", "cross_attn_image": "cross_attn"},
        {"norm1": "layer_norm1", "norm2": "layer_norm2", "norm3": "layer_norm3"}, "mlp.fc",
    ),
    # DETR decoder
    *_encoder_layer(
        _DEC + "layers.{i}.", _HDEC + "layers.{i}.",
        {"self_attn": "self_attn", "ca_text": "text_cross_attn", "cross_attn": "vision_cross_attn"},
        {"norm1": "vision_cross_attn_layer_norm", "catext_norm": "text_cross_attn_layer_norm",
         "norm2": "self_attn_layer_norm", "norm3": "mlp_layer_norm"}, "mlp.fc",
    ),
    *[_same(f"{_DEC}{m}.", f"{_HDEC}{m}.") for m in ("query_embed", "reference_points", "presence_token")],
    _same(_DEC + "presence_token_out_norm.", _HDEC + "presence_layer_norm."),
    _same(_DEC + "norm.", _HDEC + "output_layer_norm."),
    *_mlp(_DEC + "presence_token_head.", _HDEC + "presence_head.", ("layer1", "layer2", "layer3")),
    *_mlp(_DEC + "bbox_embed.", _HDEC + "box_head.", ("layer1", "layer2", "layer3")),
    *_mlp(_DEC + "ref_point_head.", _HDEC + "ref_point_head.", ("layer1", "layer2")),
    *_mlp(_DEC + "boxRPB_embed_x.", _HDEC + "box_rpb_embed_x.", ("layer1", "layer2")),
    *_mlp(_DEC + "boxRPB_embed_y.", _HDEC + "box_rpb_embed_y.", ("layer1", "layer2")),
    # Dot-product scoring
    *_mlp(_D + "dot_prod_scoring.prompt_mlp.", _DM + "dot_product_scoring.text_mlp.", ("layer1", "layer2")),
    _same(_D + "dot_prod_scoring.prompt_mlp.out_norm.", _DM + "dot_product_scoring.text_mlp_out_norm."),
    _same(_D + "dot_prod_scoring.prompt_proj.", _DM + "dot_product_scoring.text_proj."),
    _same(_D + "dot_prod_scoring.hs_proj.", _DM + "dot_product_scoring.query_proj."),
    # Segmentation (mask) head
    _same(_SEG + "pixel_decoder.", _HSEG + "pixel_decoder."),
    _same(_SEG + "mask_predictor.mask_embed.", _HSEG + "mask_embedder."),
    _same(_SEG + "instance_seg_head.", _HSEG + "instance_projection."),
    _same(_SEG + "semantic_seg_head.", _HSEG + "semantic_projection."),
    *_attention(_SEG + "cross_attend_prompt.", _HSEG + "prompt_cross_attn."),
    _same(_SEG + "cross_attn_norm.", _HSEG + "prompt_cross_attn_norm."),
]

_TRACKER_RULES: list[Rule] = [
    # SAM-style mask decoder
    *[_same(f"{_MD}{m}.", f"{_HMD}{m}.")
      for m in ("conv_s0", "conv_s1", "iou_token", "mask_tokens", "obj_score_token")],
    *_mlp(_MD + "iou_prediction_head.", _HMD + "iou_prediction_head.", _MLP3),
    *_mlp(_MD + "pred_obj_score_head.", _HMD + "pred_obj_score_head.", _MLP3),
    *_mlp(_MD + "output_hypernetworks_mlps.{j}.", _HMD + "output_hypernetworks_mlps.{j}.", _MLP3),
    _same(_MD + "output_upscaling.0.", _HMD + "upscale_conv1."),
    _same(_MD + "output_upscaling.1.", _HMD + "upscale_layer_norm."),
    _same(_MD + "output_upscaling.3.", _HMD + "upscale_conv2."),
    *_attention(_MD + "transformer.final_attn_token_to_image.", _HMD + "transformer.final_attn_token_to_image.",
                fused=False),
    _same(_MD + "transformer.norm_final_attn.", _HMD + "transformer.layer_norm_final_attn."),
    *[rule for a in ("self_attn", "cross_attn_token_to_image", "cross_attn_image_to_token")
      for rule in _attention(f"{_MD}transformer.layers.{{i}}.{a}.", f"{_HMD}transformer.layers.{{i}}.{a}.",
                             fused=False)],
    *[_same(f"{_MD}transformer.layers.{{i}}.norm{n}.", f"{_HMD}transformer.layers.{{i}}.layer_norm{n}.")
      for n in (1, 2, 3, 4)],
    _same(_MD + "transformer.layers.{i}.mlp.lin1.", _HMD + "transformer.layers.{i}.mlp.proj_in."),
    _same(_MD + "transformer.layers.{i}.mlp.lin2.", _HMD + "transformer.layers.{i}.mlp.proj_out."),
    # Prompt encoder (only its mask/no-mask path is used with detector-seeded tracking)
    Rule(_PE + "point_embeddings.{i}.weight", _HPE + "point_embed.weight", "stack"),
    Rule(_PE + "pe_layer.positional_encoding_gaussian_matrix",
         (_HPE + "shared_embedding.positional_embedding", _TM + "shared_image_embedding.positional_embedding")),
    *[_same(f"{_PE}{m}.", f"{_HPE}{m}.") for m in ("no_mask_embed", "not_a_point_embed")],
    *[_same(f"{_PE}mask_downscaling.{a}.", f"{_HPE}mask_embed.{b}.") for a, b in
      (("0", "conv1"), ("1", "layer_norm1"), ("3", "conv2"), ("4", "layer_norm2"), ("6", "conv3"))],
    # Memory attention (``transformer.encoder`` natively)
    *_encoder_layer(
        _T + "transformer.encoder.layers.{i}.", _TM + "memory_attention.layers.{i}.",
        {"self_attn": "self_attn", "cross_attn_image": "cross_attn_image"},
        {"norm1": "layer_norm1", "norm2": "layer_norm2", "norm3": "layer_norm3"}, "linear", fused=False,
    ),
    _same(_T + "transformer.encoder.norm.", _TM + "memory_attention.layer_norm."),
    # Memory encoder
    *[_same(f"{_MEM}mask_downsampler.encoder.{3 * n}.", f"{_HMEM}mask_downsampler.layers.{n}.conv.") for n in range(4)],
    *[_same(f"{_MEM}mask_downsampler.encoder.{3 * n + 1}.", f"{_HMEM}mask_downsampler.layers.{n}.layer_norm.")
      for n in range(4)],
    _same(_MEM + "mask_downsampler.encoder.12.", _HMEM + "mask_downsampler.final_conv."),
    *[_same(f"{_MEM}fuser.layers.{{i}}.{a}.", f"{_HMEM}memory_fuser.layers.{{i}}.{b}.") for a, b in
      (("dwconv", "depthwise_conv"), ("norm", "layer_norm"), ("pwconv1", "pointwise_conv1"),
       ("pwconv2", "pointwise_conv2"))],
    Rule(_MEM + "fuser.layers.{i}.gamma", _HMEM + "memory_fuser.layers.{i}.scale"),
    _same(_MEM + "pix_feat_proj.", _HMEM + "feature_projection."),
    _same(_MEM + "out_proj.", _HMEM + "projection."),
    # Memory bank and object pointers
    *_mlp(_T + "obj_ptr_proj.", _TM + "object_pointer_proj.", _MLP3),
    _same(_T + "obj_ptr_tpos_proj.", _TM + "temporal_positional_encoding_projection_layer."),
    _same(_T + "mask_downsample.", _TM + "mask_downsample."),
    *[Rule(_T + a, _TM + b) for a, b in (
        ("maskmem_tpos_enc", "memory_temporal_positional_encoding"),
        ("no_mem_embed", "no_memory_embedding"),
        ("no_mem_pos_enc", "no_memory_positional_encoding"),
        ("no_obj_ptr", "no_object_pointer"),
        ("no_obj_embed_spatial", "occlusion_spatial_embedding_parameter"),
    )],
]

#: The complete table, in the ``detector.`` / ``tracker.`` names of Meta's ``sam3.pt``.
RULES: tuple[Rule, ...] = tuple(_DETECTOR_RULES + _TRACKER_RULES)

#: Native parameters with no transformers counterpart, dropped on purpose: RoPE tables (recomputed from the
#: config) and the geometry encoder's point-prompt projections (transformers' SAM3 takes box prompts only).
DROPPED_NATIVE: tuple[str, ...] = (
    r"detector\.backbone\.vision_backbone\.trunk\.blocks\.\d+\.attn\.freqs_cis",
    r"detector\.geometry_encoder\.points_(direct|pool|pos_enc)_project\.\w+",
)

_COMPILED = [(rule, _regex(rule.native), [_regex(t) for t in rule.targets]) for rule in RULES]
_DROPPED = [re.compile(p) for p in DROPPED_NATIVE]


@dataclass
class Conversion:
    """Result of :func:`native_to_transformers`.

    Attributes:
        state_dict: transformers names → tensors (views of the input where no reshape was needed).
        dropped: native names discarded on purpose (see :data:`DROPPED_NATIVE`, or tracker weights when the target
            is a detector-only model).
        unmapped: native names no rule knows — reported, since a model that still gets every parameter is fine,
            but they usually mean a newer or modified checkpoint.
    """

    state_dict: dict[str, torch.Tensor]
    dropped: list[str] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)

    def report(self) -> dict[str, object]:
        """Counts and names for ``medsam3.json`` and the CLI summary."""
        return {"parameters": len(self.state_dict), "dropped": self.dropped, "unmapped": self.unmapped}


def _normalise_native(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bring the native variants to ``sam3.pt`` naming: bare image-model keys, interactive-predictor tracker keys."""
    keys = list(state)
    if not any(k.startswith(("detector.", "tracker.")) for k in keys):
        out = {}
        for k, v in state.items():
            if k.startswith("inst_interactive_predictor.model."):
                out[_T + k[len("inst_interactive_predictor.model.") :]] = v
            else:
                out[_D + k] = v
        return out
    return dict(state)


def _apply(rule: Rule, tensor: torch.Tensor, fields: dict[str, str]) -> dict[str, torch.Tensor]:
    """The transformers tensors produced from one native tensor by ``rule``."""
    if rule.op == "split":
        return {rule.hf.format(**fields, qkv=x): part for x, part in zip(_QKV, torch.chunk(tensor, 3, dim=0))}
    if rule.op == "transpose":
        tensor = tensor.t()
    elif rule.op == "drop_cls":
        positions = tensor.shape[1]
        side = int(round((positions - 1) ** 0.5))
        if side * side == positions - 1:
            tensor = tensor[:, 1:]
    # Extra targets get their own copy: transformers refuses to save one storage under two unrelated names.
    return {t.format(**fields): tensor if n == 0 else tensor.clone() for n, t in enumerate(rule.targets)}


def native_to_transformers(state: Mapping[str, torch.Tensor], config: PretrainedConfig) -> Conversion:
    """Rename (and reshape) a native SAM3 state dict for the transformers model of ``config``.

    A ``Sam3VideoConfig`` gets ``detector_model.* / tracker_model.* / tracker_neck.*`` names; a ``Sam3Config`` gets
    the bare detector names, and tracker weights are dropped. Works on meta tensors too (shape checks).
    """
    video = isinstance(config, Sam3VideoConfig)
    out: dict[str, torch.Tensor] = {}
    stacks: dict[str, dict[int, torch.Tensor]] = {}
    conv = Conversion(state_dict=out)
    for key, tensor in _normalise_native(state).items():
        if any(p.fullmatch(key) for p in _DROPPED):
            conv.dropped.append(key)
            continue
        match = next(((rule, m) for rule, rx, _ in _COMPILED if (m := rx.fullmatch(key))), None)
        if match is None:
            conv.unmapped.append(key)
            continue
        rule, m = match
        fields = {k: v for k, v in m.groupdict().items() if v is not None}
        if rule.op == "stack":
            stacks.setdefault(rule.hf, {})[int(fields.pop("i"))] = tensor
            continue
        out.update(_apply(rule, tensor, fields))
    for target, rows in stacks.items():
        out[target] = torch.cat([rows[n] for n in sorted(rows)], dim=0)
    if not video:
        for key in [k for k in out if not k.startswith(_DM)]:
            conv.dropped.append(key)
            del out[key]
        for key in [k for k in out]:
            out[key[len(_DM) :]] = out.pop(key)
    return conv


def transformers_to_native(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse mapping: a transformers SAM3 state dict in Meta's ``sam3.pt`` names.

    Used to export fine-tuned weights to Meta's tools and, in tests, to fabricate native checkpoints. Detector-only
    (bare ``Sam3Model``) names are accepted and give ``detector.*`` names. The class-token position row that
    transformers does not keep is filled with zeros.
    """
    if not any(k.startswith((_DM, _TM, "tracker_neck.")) for k in state):
        state = {_DM + k: v for k, v in state.items()}
    native: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    rows: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        found = next(
            ((rule, n, m) for rule, _, targets in _COMPILED for n, t in enumerate(targets) if (m := t.fullmatch(key))),
            None,
        )
        if found is None:
            raise CheckpointError(f"No native name is known for transformers parameter {key!r}.")
        rule, n, m = found
        if n:  # a second target of one native tensor (the tracker's duplicate positional-embedding buffer)
            continue
        fields = {k: v for k, v in m.groupdict().items() if v is not None}
        if rule.op == "split":
            qkv = fields.pop("qkv")
            fused.setdefault(rule.native.format(**fields), {})[qkv] = tensor
        elif rule.op == "stack":
            rows[rule.native] = tensor
        elif rule.op == "transpose":
            native[rule.native.format(**fields)] = tensor.t()
        elif rule.op == "drop_cls":
            native[rule.native.format(**fields)] = torch.cat([tensor.new_zeros(tensor[:, :1].shape), tensor], dim=1)
        else:
            native[rule.native.format(**fields)] = tensor
    for name, parts in fused.items():
        native[name] = torch.cat([parts[x] for x in _QKV], dim=0)
    for template, table in rows.items():
        for n in range(table.shape[0]):
            native[template.format(i=n)] = table[n : n + 1]
    # A 2x FPN level has one up-convolution, natively ``dconv_2x2``; only the 4x level has ``dconv_2x2_0/_1``.
    for key in [k for k in native if ".dconv_2x2_0." in k]:
        if key.replace(".dconv_2x2_0.", ".dconv_2x2_1.") not in native:
            native[key.replace(".dconv_2x2_0.", ".dconv_2x2.")] = native.pop(key)
    return native


def config_for_checkpoint(raw: checkpoints.RawWeights, config: Optional[PretrainedConfig] = None) -> PretrainedConfig:
    """The architecture a single checkpoint file is loaded into.

    An explicit ``config`` wins, then a ``config.json`` beside the file (how tiny or custom models travel), then
    full-size SAM3 — what Meta and Medical SAM3 release. A file without tracker weights gets the detector alone.
    """
    if config is None and (raw.path.parent / "config.json").is_file():
        config = checkpoints.read_config(raw.path.parent)
    tracker_heads = ("tracker.", "tracker_model.", "tracker_neck.", "inst_interactive_predictor.")
    has_tracker = any(k.startswith(tracker_heads) for k in raw.state_dict)
    if config is None:
        config = Sam3VideoConfig() if has_tracker else Sam3Config()
    if isinstance(config, Sam3VideoConfig) and not has_tracker:
        config = config.detector_config
    return config


def release_defaults(source: Union[str, Path]) -> dict[str, object]:
    """What the catalogue says about a release file of this name (image size, recommended mode), or ``{}``.

    So that ``medsam3 convert checkpoint_3D_checkpoint8.pt out/`` builds the 504-px model the file was trained as,
    with no flag to remember.
    """
    from medsam3_core.model.download import RELEASES, release_conventions  # the catalogue imports this module

    name = Path(source).name
    for rel in RELEASES.values():
        if rel.filename == name and not rel.adapter:
            return {"image_size": rel.image_size, "conventions": release_conventions(rel)}
    return {}


def _tracker_note(config: PretrainedConfig) -> str:
    if isinstance(config, Sam3VideoConfig):
        return "detector + tracker"
    return "image model only: the checkpoint holds no tracker weights, so it runs in detect mode"


def convert_checkpoint(
    source: Union[str, Path],
    out_dir: Union[str, Path],
    lora: Union[str, Path, None] = None,
    config: Optional[PretrainedConfig] = None,
    dtype: torch.dtype = torch.float32,
    image_size: Optional[int] = None,
    conventions: Optional[Mapping[str, object]] = None,
    lora_alpha: Optional[float] = None,
) -> dict[str, object]:
    """Convert a checkpoint file into a weights-only transformers folder loadable with ``--model OUT_DIR``.

    Args:
        source: native ``sam3.pt``, Medical SAM3 trainer checkpoint (with or without the ``detector.`` prefix), or
            safetensors/``.pt`` in transformers names.
        out_dir: folder to create (replaced atomically if it exists).
        lora: optional LoRA adapter merged into the weights: a PEFT folder or a raw state-dict file
            (:mod:`medsam3_core.model.lora`).
        config: target architecture (default: see :func:`config_for_checkpoint`).
        dtype: storage precision of the output.
        image_size: square input size to build the model for (``config.json``); default: the release's own when
            ``source`` is a known release file (:func:`release_defaults`), else the architecture's (1008 for SAM3).
        conventions: stated run conventions written to ``medsam3.json`` (e.g. ``recommended_mode``).
        lora_alpha: LoRA alpha of a raw adapter that does not state its own.

    Returns:
        A report (source, layout, image size, tracker, dropped trainer entries, dropped/unmapped native names, LoRA
        merge, timings), also written to ``OUT_DIR/medsam3.json``.

    Raises:
        CheckpointError: unreadable input, or a conversion that would leave parameters at random initialisation.
    """
    start = time.perf_counter()
    defaults = release_defaults(source)
    raw = checkpoints.read_weights(source)
    config = config_for_checkpoint(raw, config)
    size = image_size or defaults.get("image_size")
    if size:
        config = with_image_size(config, int(size))
    conversion = Conversion(state_dict=raw.state_dict)
    if raw.layout == Layout.NATIVE:
        conversion = native_to_transformers(raw.state_dict, config)
    model = checkpoints.instantiate(config, conversion.state_dict, dtype, source=Path(source).name)
    merge = None
    if lora is not None:
        model, merge = merge_lora(model, lora, alpha=lora_alpha)
    stated = {**dict(defaults.get("conventions") or {}), **dict(conventions or {})}
    report = {
        "source": str(source),
        "layout": raw.layout,
        "image_size": config_image_size(config),
        "tracker": _tracker_note(config),
        "dropped_entries": raw.dropped,
        **conversion.report(),
        "lora": merge.report() if merge else None,
        "read_and_check_seconds": round(time.perf_counter() - start, 1),
    }
    if stated:
        report["conventions"] = stated
    checkpoints.save_model(model, out_dir, tokenizer=load_tokenizer(Path(source).parent), extra=report)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="native SAM3 / Medical SAM3 .pt (or a .safetensors) checkpoint file")
    parser.add_argument("out_dir", help="folder to write (config.json + model.safetensors); use it with --model")
    parser.add_argument("--lora", metavar="ADAPTER", help="LoRA adapter to merge into the weights: a PEFT folder or a "
                        "raw state-dict .pt / .safetensors file")
    parser.add_argument("--lora-alpha", type=float, default=None,
                        help="LoRA alpha of a raw adapter that does not state its own (default: its rank, scaling 1)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="square input size the model is built for (default: the release's own for a known "
                             "release file, e.g. 504 for the Medical SAM3 3D checkpoint; else 1008 as SAM3)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                        help="storage precision of the converted weights (default float32)")


def run(args: argparse.Namespace) -> int:
    print(f"converting {args.source} -> {args.out_dir} (a 10 GB trainer checkpoint takes a few minutes)",
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        check_output_folder(args.out_dir, "output folder")  # before minutes of loading a checkpoint
        report = convert_checkpoint(args.source, args.out_dir, lora=args.lora, dtype=getattr(torch, args.dtype),
                                    image_size=args.image_size, lora_alpha=args.lora_alpha)
    except KeyboardInterrupt:
        print("cancelled; nothing was written", file=sys.stderr)
        return 3
    except MedSam3Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"converted {report['parameters']} tensors ({report['layout']}, {report['image_size']} px, "
          f"{report['tracker']}) into {args.out_dir} "
          f"in {time.perf_counter() - start:.1f} s; dropped {len(report['dropped'])}, "
          f"unmapped {len(report['unmapped'])}")
    return 0
