"""``segment(input, prompts)``: the one-call Python predictor (``from medsam3_core import segment``).

It does what ``medsam3 infer`` does, minus the files: open the input (a path, a DICOM folder, ``"demo"`` or a
:class:`~medsam3_core.io.geometry.Volume`), resolve the prompts to the model's concepts (synonyms, plurals), and run
the local engine or a remote server. The segmenter for a model name is kept between calls (the last one only), so a
loop over scans loads the weights once; pass a :class:`~medsam3_core.segmenters.local.LocalSegmenter` to control
that yourself.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from medsam3_core.errors import SettingError
from medsam3_core.io.geometry import Volume
from medsam3_core.progress import CancelToken, ProgressCallback
from medsam3_core.prompts import PromptResolution
from medsam3_core.segmenter import SegmentationResult, Segmenter, SegmentOptions

__all__ = ["segment", "segment_resolved"]


def segment(
    input: Union[str, os.PathLike, Volume],
    prompts: Union[str, Sequence[str]],
    model: Any = "demo",
    *,
    device: str = "auto",
    server: Optional[str] = None,
    api_key: Optional[str] = None,
    synonyms: Union[None, str, Path] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    **options: Any,
) -> SegmentationResult:
    """Segment ``input`` for each prompt; label ``k + 1`` of ``result.labelmap`` is ``prompts[k]``.

    Args:
        input: a file (NIfTI, NRRD, MHA, PNG …), a DICOM folder, ``"demo"`` (the bundled CT phantom) or a Volume.
        prompts: one prompt or several, e.g. ``["kidney", "liver"]``.
        model: ``"demo"``, a release name, a model folder or checkpoint file, a loaded ``Sam3Bundle``, or any
            :class:`~medsam3_core.segmenter.Segmenter` (used as it is).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (for a model that still has to be loaded).
        server, api_key: run on a remote ``medsam3 serve`` instead (the key defaults to ``$MEDSAM3_API_KEY``).
        synonyms: an extra synonym table (JSON) for prompt resolution.
        options: :class:`~medsam3_core.segmenter.SegmentOptions` fields: ``threshold``, ``window``, ``mode``,
            ``slice_axis``, ``batch_size``, ``cleanup``, ``memory_size``, ``confidence_map``.

    Raises:
        MedSam3Error: a bad input, prompt, option or model, with a one-line message (``field`` names the option).
    """
    from medsam3_core.prompts import resolve_prompts
    from medsam3_core.segmenters.opening import open_input

    run_options = _options(options)
    resolutions = resolve_prompts([prompts] if isinstance(prompts, str) else list(prompts), synonyms)
    volume = input if isinstance(input, Volume) else open_input(str(input), progress=progress, cancel=cancel)
    segmenter = _segmenter(model, device, server, api_key)
    return segment_resolved(segmenter, volume, resolutions, run_options, progress, cancel)


def segment_resolved(
    segmenter: Segmenter,
    volume: Volume,
    resolutions: Sequence[PromptResolution],
    options: Optional[SegmentOptions] = None,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> SegmentationResult:
    """Segment by prompts already resolved to concepts: each prompt keeps its own label, the model reads its concept,
    and the result warns about prompts that mean the same concept. The Python API, ``infer``/``batch`` and the Slicer
    module all segment through this, so they give the same label maps and warnings for the same prompts."""
    from medsam3_core.prompts import duplicate_concepts

    result = segmenter.segment(volume, [r.raw for r in resolutions], options, progress=progress, cancel=cancel,
                               concepts=[r.concept for r in resolutions])
    for concept, raws in duplicate_concepts(resolutions).items():
        result.warnings.append(f"Prompts {', '.join(map(repr, raws))} all mean {concept!r}; each got its own label.")
    return result


def _options(options: dict[str, Any]) -> SegmentOptions:
    known = {f.name for f in dataclasses.fields(SegmentOptions)}
    for name in options:
        if name not in known:
            raise SettingError(f"Unknown option {name!r}; known options: {', '.join(sorted(known))}.", field=name)
    return SegmentOptions(**options)


def _segmenter(model: Any, device: str, server: Optional[str], api_key: Optional[str]) -> Segmenter:
    if hasattr(model, "segment"):
        return model
    if not isinstance(model, (str, os.PathLike)):  # a loaded Sam3Bundle
        from medsam3_core.segmenters.local import LocalSegmenter

        return LocalSegmenter(model)
    return _named_segmenter(str(model), device, server, api_key)


@functools.lru_cache(maxsize=1)
def _named_segmenter(model: str, device: str, server: Optional[str], api_key: Optional[str]) -> Segmenter:
    from medsam3_core.segmenters.opening import open_segmenter

    return open_segmenter(model, device, server, api_key)
