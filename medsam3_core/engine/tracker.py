"""Memory-bank propagation of objects across slices on transformers' ``Sam3TrackerVideoModel``, with bounded memory.

Why not ``Sam3TrackerVideoModel.forward`` / ``propagate_in_video_iterator``? They keep every frame and every object's
per-frame outputs in the inference session (memory grows with the number of slices), run the memory attention and SAM
mask decoder once per object at batch 1, and run under ``inference_mode`` (the stock pipeline's behaviour, measured in
``bench/``). This module drives the same submodules (``memory_attention``, ``prompt_encoder`` + ``mask_decoder``,
``memory_encoder`` via ``_encode_new_memory``, seeding a mask as ``_use_mask_as_output`` does) with the same maths, but

* each object keeps a **bounded** memory bank: its conditioning memory (the seed slice) plus a ring of the
  ``memory_size - 1`` most recent slices and a ring of recent object pointers, so memory does not grow with the
  number of slices;
* all live objects are propagated **together in one batch** (memory attention and mask decoder), which is what
  makes many prompts cheap; the memory attention's object-independent work runs once per slice and memory frames'
  keys are reused while they stay in the bank (:mod:`~medsam3_core.engine.memory_attention`); banks of different lengths
  are zero-padded and the padding is masked out of the memory cross-attention;
* the slice features come from the detector's ViT through ``bundle.tracker_neck`` (the ViT runs once per slice
  and both heads read it, as in ``Sam3VideoModel``).

Direction: :meth:`ObjectMemory.turn` clears the recent ring and keeps the conditioning memory, so an object seeded on
slice *s* is propagated towards higher slices and then, from the same seed, towards lower ones. The temporal
encodings follow transformers' conventions (conditioning memory uses the last temporal embedding; a memory *d*
slices away uses embedding ``d - 1``), which the tests check against ``Sam3TrackerVideoModel`` itself.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from medsam3_core.errors import ModelError
from medsam3_core.engine.memory_attention import BankLayout, BatchedMemoryAttention, FrameKeys
from medsam3_core.model.bundle import Sam3Bundle

__all__ = ["SliceFeatures", "MemoryEntry", "ObjectMemory", "TrackStep", "MemoryTracker"]

# Object-score logits written into memory for fused masks: the same ±10 ``Sam3VideoModel`` uses after fusion.
_PRESENT_LOGIT = 10.0
# Mask logit transformers writes where the decoder says the object is absent.
_NO_OBJECT_LOGIT = -1024.0


@dataclass
class SliceFeatures:
    """Tracker view of one encoded slice (batch 1; :meth:`MemoryTracker.batch_features` fills one for a whole batch).

    Attributes:
        high_res: the two finer FPN levels after the SAM decoder's ``conv_s0``/``conv_s1``, ``(1, C_l, h_l, w_l)``.
        top: coarsest level, sequence-first ``(h*w, 1, C)``.
        top_pos: its sine position encoding, ``(h*w, 1, C)``.
    """

    high_res: list[torch.Tensor]
    top: torch.Tensor
    top_pos: torch.Tensor


@dataclass
class MemoryEntry:
    """One slice's memory of one object: spatial memory ``(h*w, 1, 64)``, its position encoding, object pointer, and
    the memory attention's keys of it once computed (:class:`~medsam3_core.engine.memory_attention.FrameKeys`)."""

    slice_index: int
    features: torch.Tensor
    pos: torch.Tensor
    pointer: torch.Tensor
    keys: Optional[FrameKeys] = field(default=None, repr=False)


@dataclass
class ObjectMemory:
    """The bounded memory bank of one object.

    ``conditioning`` is the seed slice (a detector mask); ``recent`` holds at most ``capacity`` propagated slices of
    the current direction and ``pointers`` at most ``pointer_capacity`` object pointers of those slices.
    """

    conditioning: MemoryEntry
    capacity: int
    pointer_capacity: int
    recent: deque = field(default_factory=deque)
    pointers: deque = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.recent = deque(self.recent, maxlen=max(self.capacity, 0))
        self.pointers = deque(self.pointers, maxlen=max(self.pointer_capacity, 0))

    def remember(self, entry: MemoryEntry) -> None:
        if self.recent.maxlen:
            self.recent.append(entry)
        if self.pointers.maxlen:
            self.pointers.append(entry)

    def turn(self) -> None:
        """Start the other direction from the seed: forget propagated slices, keep the conditioning memory."""
        self.recent.clear()
        self.pointers.clear()

    @property
    def layout(self) -> tuple[int, int]:
        """How many recent memories and object pointers the bank holds."""
        return len(self.recent), len(self.pointers)


@dataclass
class TrackStep:
    """Tracker output for a batch of objects on one slice.

    Attributes:
        mask_logits: ``(N, h, w)`` low-resolution mask logits in model-input space (``h = 4 · grid``).
        score_logits: ``(N,)`` object-presence logits (``sigmoid`` → probability that the object is on the slice).
        pointers: ``(N, C)`` object pointers of this slice (kept in memory by :meth:`MemoryTracker.remember`).
    """

    mask_logits: torch.Tensor
    score_logits: torch.Tensor
    pointers: torch.Tensor


class MemoryTracker:
    """Seeds objects from masks, propagates them slice by slice and keeps their bounded memory banks.

    Args:
        bundle: a :class:`Sam3Bundle` with a tracker (``bundle.has_tracker``).
        memory_size: memory frames per object including the conditioning one (1 … checkpoint ``num_maskmem``).
        num_slices: slices in the volume (object-pointer temporal encodings are normalised by it, as in
            transformers for a video of that length).
    """

    def __init__(self, bundle: Sam3Bundle, memory_size: int, num_slices: int) -> None:
        if not bundle.has_tracker:
            raise ModelError("This checkpoint has no tracker; run in detect mode.", field="mode")
        self.model = bundle.tracker
        self.neck = bundle.tracker_neck
        self.dtype = bundle.dtype
        num_maskmem = int(self.model.num_maskmem)
        if not 1 <= memory_size <= num_maskmem:
            raise ModelError(f"The memory size must be between 1 and the checkpoint's {num_maskmem} memory frames.",
                             field="memory_size")
        self.memory_size = memory_size
        self.pointer_span = max(1, min(int(num_slices), int(self.model.config.max_object_pointers_in_encoder)))
        self._multimask = self.model._use_multimask(False, None)
        with torch.no_grad():  # a constant, computed once per run (no_grad, not inference_mode: training reuses it)
            self._image_pe = self.model.get_image_wide_positional_embeddings()
        self.attention = BatchedMemoryAttention(self.model, self.pointer_span)

    @property
    def mask_grid(self) -> tuple[int, int]:
        """The low-res mask grid ``(h, w)`` of :class:`TrackStep` (the detector's mask grid too: ``4 · grid``)."""
        return tuple(int(s) for s in self.model.prompt_encoder.mask_input_size)

    # -- features ------------------------------------------------------------------------------------------------
    def features(self, vision_embeds) -> list[SliceFeatures]:
        """Tracker features for each slice of a batch of detector ViT outputs (``Sam3VisionEncoderOutput``)."""
        batch = self.batch_features(vision_embeds)
        return [
            SliceFeatures([level[b : b + 1] for level in batch.high_res], batch.top[:, b : b + 1], batch.top_pos[:, :1])
            for b in range(batch.top.shape[1])
        ]

    def batch_features(self, vision_embeds) -> SliceFeatures:
        """The same for the whole batch at once: ``high_res`` ``(B, C_l, h_l, w_l)``, ``top`` ``(h*w, B, C)``, and
        ``top_pos`` ``(h*w, 1, C)`` (it depends on the grid only, so one copy serves every slice)."""
        hidden = vision_embeds.last_hidden_state
        batch = hidden.shape[0]
        height, width = self.model.prompt_encoder.image_embedding_size
        spatial = hidden.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        levels, positions = self.neck(spatial)
        s0 = self.model.mask_decoder.conv_s0(levels[0])
        s1 = self.model.mask_decoder.conv_s1(levels[1])
        top = levels[2].flatten(2).permute(2, 0, 1)
        top_pos = positions[2][:1].flatten(2).permute(2, 0, 1)
        return SliceFeatures([s0, s1], top, top_pos)

    # -- seeding -------------------------------------------------------------------------------------------------
    def seed(self, feats: SliceFeatures, masks: torch.Tensor, slice_index: int) -> list[ObjectMemory]:
        """Start one object per binary mask ``(N, h, w)`` on this slice (the mask is taken as ground truth)."""
        n = masks.shape[0]
        if n == 0:
            return []
        model = self.model
        size = model.image_size
        mask_in = F.interpolate(masks[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
        mask_in = (mask_in > 0.5).to(self.dtype)
        # The mask is the output (logits ±10, as transformers' ``_use_mask_as_output``); SAM's decoder, prompted with
        # the downsampled mask, only supplies the object pointer.
        high_res = mask_in * 20.0 - 10.0
        prompt = model.mask_downsample(mask_in)
        if prompt.shape[-2:] != tuple(model.prompt_encoder.mask_input_size):
            prompt = F.interpolate(
                prompt.float(), size=model.prompt_encoder.mask_input_size, mode="bilinear", align_corners=False,
                antialias=True,
            ).to(prompt.dtype)
        present = mask_in.flatten(1).gt(0).any(dim=1, keepdim=True)
        _, _, pointer = self._decode(self._high_res(feats, n) + [self._top_map(feats, n)], prompt, multimask=True)
        pointer = torch.where(present, pointer, model.no_object_pointer)
        score = torch.where(present, 10.0, -10.0).to(high_res.dtype)[:, :, None]
        features, pos = model._encode_new_memory(feats.top.expand(-1, n, -1), high_res, score, is_mask_from_pts=True)
        pointers = pointer
        return [
            ObjectMemory(
                MemoryEntry(slice_index, features[:, i : i + 1], pos[:, i : i + 1], pointers[i : i + 1]),
                capacity=self.memory_size - 1,
                pointer_capacity=self.pointer_span - 1,
            )
            for i in range(n)
        ]

    # -- propagation ---------------------------------------------------------------------------------------------
    def propagate(self, feats: SliceFeatures, memories: Sequence[ObjectMemory], slice_index: int) -> TrackStep:
        """Predict every object on ``slice_index`` from its memory bank, all objects in one batch.

        Objects whose banks hold different numbers of entries (started on different slices) are padded to the
        longest bank and the padding is masked out of the memory cross-attention, so the result equals propagating
        each object alone.
        """
        model = self.model
        n = len(memories)
        if n == 0:
            empty = feats.top.new_zeros((0,))
            return TrackStep(empty.reshape(0, *self.mask_grid), empty, empty.reshape(0, model.hidden_dim))
        conditioned = self.attention(feats.top, feats.top_pos, [self._bank(m, slice_index) for m in memories])
        height, width = model.backbone_feature_sizes[-1]
        pix = conditioned.transpose(1, 2).reshape(n, -1, height, width)
        masks, scores, pointers = self._decode(self._high_res(feats, n) + [pix], None, self._multimask)
        return TrackStep(masks, scores, pointers)

    def remember(
        self,
        feats: SliceFeatures,
        memories: Sequence[ObjectMemory],
        slice_index: int,
        mask_logits: torch.Tensor,
        present: torch.Tensor,
        pointers: torch.Tensor,
    ) -> None:
        """Encode the final (fused) mask logits ``(N, h, w)`` of this slice into each object's memory bank.

        ``present`` says whether each object is on the slice: ``(N,)`` bool after fusion (absent objects are
        remembered as "not here" through SAM's occlusion embedding, with the ±10 logits ``Sam3VideoModel`` writes
        after its own fusion), or the tracker's raw ``(N,)`` float score logits.
        """
        n = len(memories)
        if n == 0:
            return
        present = present.to(mask_logits.device)
        if present.dtype == torch.bool:
            present = torch.where(present, _PRESENT_LOGIT, -_PRESENT_LOGIT)
        score = present.to(mask_logits.dtype)[:, None, None]
        features, pos = self.model._encode_new_memory(
            feats.top.expand(-1, n, -1), mask_logits[:, None], score, is_mask_from_pts=False
        )
        for i, mem in enumerate(memories):
            mem.remember(MemoryEntry(slice_index, features[:, i : i + 1], pos[:, i : i + 1], pointers[i : i + 1]))

    # -- internals -----------------------------------------------------------------------------------------------
    def _top_map(self, feats: SliceFeatures, n: int) -> torch.Tensor:
        height, width = self.model.backbone_feature_sizes[-1]
        return feats.top.permute(1, 2, 0).reshape(1, -1, height, width).expand(n, -1, -1, -1)

    @staticmethod
    def _high_res(feats: SliceFeatures, n: int) -> list[torch.Tensor]:
        return [level.expand(n, -1, -1, -1) for level in feats.high_res]

    def _decode(
        self, embeddings: list[torch.Tensor], mask_prompt: Optional[torch.Tensor], multimask: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """SAM mask decoder for ``N`` objects with per-object image embeddings: ``(masks, score logits, pointers)``.

        Same maths as ``Sam3TrackerVideoModel._single_frame_forward`` without point prompts, written out because
        that method picks the best of the multimask outputs with indexing that is only right for batch 1.
        """
        model = self.model
        n = embeddings[-1].shape[0]
        points = embeddings[-1].new_zeros(n, 1, 1, 2)
        labels = -torch.ones(n, 1, 1, dtype=torch.int32, device=points.device)
        sparse, dense = model.prompt_encoder(
            input_points=points, input_labels=labels, input_boxes=None, input_masks=mask_prompt
        )
        masks, iou, tokens, score_logits = model.mask_decoder(
            image_embeddings=embeddings[-1],
            image_positional_embeddings=self._image_pe.expand(n, -1, -1, -1),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            high_resolution_features=embeddings[:-1],
        )
        rows = torch.arange(n, device=masks.device)
        best = iou[:, 0].argmax(dim=-1) if multimask else torch.zeros_like(rows)
        masks = masks[rows, 0, best]
        token = tokens[rows, 0, best] if tokens.shape[2] > 1 else tokens[:, 0, 0]
        score_logits = score_logits.reshape(n)
        present = score_logits[:, None] > 0
        masks = torch.where(present[:, :, None], masks, _NO_OBJECT_LOGIT)
        pointer = torch.where(present, model.object_pointer_proj(token), model.no_object_pointer)
        return masks, score_logits, pointer

    def _bank(self, memory: ObjectMemory, slice_index: int) -> BankLayout:
        """What ``memory`` offers on ``slice_index``: conditioning memory (last temporal encoding), recent memories
        (temporal encoding by slice distance, as transformers) and object pointers with their distances."""
        num_maskmem = int(self.model.num_maskmem)
        frames = [(memory.conditioning, num_maskmem - 1)]
        frames += [(e, min(abs(slice_index - e.slice_index), num_maskmem) - 1) for e in memory.recent]
        pointer_entries = [memory.conditioning, *memory.pointers]
        return BankLayout(
            frames,
            torch.cat([e.pointer.to(self.dtype) for e in pointer_entries]),
            [abs(slice_index - e.slice_index) for e in pointer_entries],
        )
