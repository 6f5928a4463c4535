"""The stock transformers pipeline the engine is measured against: ``Sam3VideoModel.propagate_in_video_iterator``
over the whole volume as a video (random weights, every query above 0, at most 3
objects per prompt)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from transformers import Sam3VideoModel
from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

from medsam3_core.io.geometry import Volume
from medsam3_core.engine.preprocess import IntensityNormalizer, Letterbox, to_model_input
from medsam3_core.model.tokenizer import bundled_tokenizer, tokenize

__all__ = ["video_frames", "run_stock"]


def video_frames(volume: Volume, size: int) -> torch.Tensor:
    """The volume as SAM3 video frames ``(N, 3, S, S)``, normalised exactly as the engine does."""
    normalize = IntensityNormalizer.for_volume(volume)
    return to_model_input(normalize(volume.array), Letterbox(*volume.shape[1:], size))


def run_stock(video: Sam3VideoModel, frames: torch.Tensor, prompts: Sequence[str]) -> dict:
    """One session with all ``prompts`` propagated forward over every frame; returns objects per frame."""
    video.max_num_objects = 3 * len(prompts)
    size = frames.shape[-1]
    session = Sam3VideoInferenceSession(video=frames, video_height=size, video_width=size,
                                        inference_device="cpu", dtype=torch.float32)
    ids, mask = tokenize(bundled_tokenizer(), prompts)
    for i, prompt in enumerate(prompts):
        pid = session.add_prompt(prompt)
        session.prompt_input_ids[pid] = ids[i : i + 1]
        session.prompt_attention_masks[pid] = mask[i : i + 1]
    counts = [len(out.object_ids) for out in video.propagate_in_video_iterator(session, start_frame_idx=0)]
    return {"objects_per_slice": float(np.mean(counts)) if counts else 0.0}
