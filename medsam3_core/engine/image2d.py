"""Text-prompted segmentation of a single 2D image (X-ray, fundus, dermoscopy, endoscopy, an ultrasound frame, …).

The image is encoded once and every prompt reuses that encoding. Results follow the paper's protocol: all instances
above the score threshold per prompt, the highest-confidence one as *the* answer for that prompt, and a label map
(label ``k`` = ``k``-th prompt) whose overlaps are resolved by pixel-wise maximum confidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from medsam3_core.engine.detector import Detector
from medsam3_core.errors import InputError, PromptError
from medsam3_core.io.geometry import Volume
from medsam3_core.model.bundle import Sam3Bundle
from medsam3_core.engine.postprocess import Instance, instances_for, pixelwise_max_labelmap, top_instance
from medsam3_core.engine.preprocess import IntensityNormalizer, Window, to_model_input

__all__ = ["ImageSegmentation", "segment_image"]


@dataclass
class ImageSegmentation:
    """What :func:`segment_image` found, keyed by prompt in the order given.

    Attributes:
        instances: every instance at or above the threshold, best first.
        top: the highest-confidence instance per prompt, ``None`` when the concept was not found.
        labelmap: ``(H, W)`` uint8, label ``k`` = ``k``-th prompt, 0 = background.
        confidence: ``(H, W)`` float32 confidence of the winning label (0 on background).
        normalization: how intensities were mapped to the model's range (for reports).
    """

    instances: dict[str, list[Instance]]
    top: dict[str, Optional[Instance]]
    labelmap: np.ndarray
    confidence: np.ndarray
    normalization: str = ""


def _as_image_volume(image: Union[Volume, np.ndarray]) -> Volume:
    """A one-slice :class:`Volume` from an image array ``(H, W)``, ``(H, W, 3|4)`` or a 2D volume."""
    if not isinstance(image, Volume):
        array = np.asarray(image)
        if array.ndim == 3 and array.shape[-1] in (3, 4):
            return Volume(array[None], modality="RGB")
        if array.ndim != 2:
            raise InputError(f"Expected a 2D image (H, W) or (H, W, 3), got an array of shape {array.shape}.")
        return Volume(array)
    if image.shape[0] != 1:
        raise InputError(
            f"This is a {image.shape[0]}-slice volume; segment volumes with the volume engine "
            "(`medsam3 infer`), or pass a single slice."
        )
    return image


def segment_image(
    bundle: Sam3Bundle,
    image: Union[Volume, np.ndarray],
    prompts: Sequence[str],
    *,
    threshold: Optional[float] = None,
    window: Window = None,
) -> ImageSegmentation:
    """Segment every prompt in one 2D image (grey or colour) with a single image encoding.

    Args:
        bundle: the loaded model.
        image: a one-slice :class:`Volume` (keeps modality and DICOM window for windowing) or an array.
        prompts: distinct, non-empty concept names such as ``"optic disc"``.
        threshold: minimum detection score for an instance; ``None``: the model's recommended one
            (``bundle.score_threshold``).
        window: intensity window override (see :meth:`IntensityNormalizer.for_volume`).

    Raises:
        PromptError: no prompts, an empty prompt or a repeated one.
        InputError: not a 2D image, or an unusable window.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    cleaned = [str(p).strip() for p in prompts]
    if not cleaned or not all(cleaned):
        raise PromptError("Give at least one non-empty text prompt, e.g. 'optic disc'.")
    repeated = sorted({p for p in cleaned if cleaned.count(p) > 1})
    if repeated:
        raise PromptError(f"Each prompt may be given only once; repeated: {', '.join(repeated)}.")
    threshold = bundle.threshold(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"The score threshold must be between 0 and 1, got {threshold}.")
    volume = _as_image_volume(image)
    normalizer = IntensityNormalizer.for_volume(volume, window)
    pixels = normalizer(volume.array[0])
    detector = Detector(bundle)
    letterbox = detector.letterbox(*pixels.shape[:2])
    text = detector.encode_text(cleaned)
    vision = detector.encode_images(to_model_input(pixels[None], letterbox, bundle.device, bundle.dtype))
    detections = detector.detect(vision, text)

    instances = {prompt: instances_for(detections, 0, p, letterbox, threshold) for p, prompt in enumerate(text.prompts)}
    top = {prompt: top_instance(found) for prompt, found in instances.items()}
    prob_maps = np.zeros((len(text), *pixels.shape[:2]), dtype=np.float32)
    scores = np.zeros(len(text), dtype=np.float32)
    for p, best in enumerate(top.values()):
        if best is not None:
            prob_maps[p], scores[p] = best.probability, best.score
    labelmap, confidence = pixelwise_max_labelmap(prob_maps, scores)
    return ImageSegmentation(instances, top, labelmap, confidence, normalizer.description)
