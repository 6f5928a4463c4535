"""In-process inference: :class:`LocalSegmenter` implements the :class:`~medsam3_core.segmenter.Segmenter` protocol
over the volume engine (:mod:`medsam3_core.engine.volume_engine`).

It is what the CLI, the HTTP server and the Slicer module run when inference is local. It owns the loaded model, so
several volumes can be segmented without reloading; the engine itself keeps no state between calls, and a lock
serialises calls from several threads (one model, one forward at a time). :meth:`LocalSegmenter.open_session` keeps
one volume's encoding between calls ("encode once, prompt many", :mod:`~medsam3_core.engine.session`): a new prompt
on it runs no ViT.
"""

from __future__ import annotations

import threading
from typing import Optional, Sequence, Union

from medsam3_core.engine.clips import run_clips
from medsam3_core.engine.feature_store import StoreBudget
from medsam3_core.engine.postprocess import volume_ml
from medsam3_core.engine.session import VolumeSession
from medsam3_core.engine.volume_engine import EngineResult, VolumeEngine
from medsam3_core.io.geometry import Volume
from medsam3_core.io.validation import check_slice_size
from medsam3_core.model.bundle import Sam3Bundle
from medsam3_core.plan import ModelLimits, RunPlan, plan_run
from medsam3_core.progress import CancelToken, ProgressCallback
from medsam3_core.segmenter import ObjectInfo, SegmentationResult, SegmentInfo, SegmentOptions

__all__ = ["LocalSegmenter", "LocalSession"]


class LocalSegmenter:
    """Segments volumes with a model held in this process.

    Args:
        model: a loaded :class:`Sam3Bundle`, or anything :func:`medsam3_core.model.bundle.load_model` accepts
            (``"demo"``, a release name, a folder or a checkpoint file).
        device: ``auto``/``cpu``/``cuda`` — used only when ``model`` still has to be loaded.
        max_objects: at most this many objects per prompt per slice (see :class:`VolumeEngine`).
        store_budget: bytes the feature stores may keep on the device and in host memory (default: from free
            memory on a GPU, file-backed on the CPU; :mod:`~medsam3_core.engine.feature_store`).
    """

    def __init__(self, model: Union[Sam3Bundle, str] = "demo", device: str = "auto", max_objects: int = 8,
                 store_budget: Optional[StoreBudget] = None) -> None:
        if not isinstance(model, Sam3Bundle):
            from medsam3_core.model.bundle import load_model

            model = load_model(model, device=device)
        self.bundle = model
        self.engine = VolumeEngine(model, max_objects=max_objects, store_budget=store_budget)
        self._lock = threading.Lock()

    def segment(
        self,
        volume: Volume,
        prompts: Sequence[str],
        options: Optional[SegmentOptions] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        concepts: Optional[Sequence[str]] = None,
    ) -> SegmentationResult:
        """Label ``k + 1`` = ``prompts[k]``; ``concepts[k]`` (default: the prompt) is the text the model reads.

        Raises:
            PromptError: no prompts, an empty one, or ``concepts`` of another length.
            Cancelled: ``cancel`` was set; nothing is returned.
        """
        return self._segment(volume, prompts, options, progress, cancel, concepts, None)

    def open_session(self, volume: Volume) -> "LocalSession":
        """A session over ``volume``: its slices are encoded by the first call and kept for the next ones."""
        return LocalSession(self, volume)

    def _segment(
        self,
        volume: Volume,
        prompts: Sequence[str],
        options: Optional[SegmentOptions],
        progress: Optional[ProgressCallback],
        cancel: Optional[CancelToken],
        concepts: Optional[Sequence[str]],
        session: Optional[VolumeSession],
    ) -> SegmentationResult:
        """:meth:`segment`, in ``session`` when one is given (the session is over ``volume``). Every setting is
        resolved once here, into a :class:`~medsam3_core.plan.RunPlan` the engine follows."""
        plan = plan_run(prompts, options, ModelLimits.of(self.bundle), concepts)
        check_slice_size(volume.shape, volume.axis_for(plan.slice_axis))  # a 1 x 1 slice holds nothing to find
        with self._lock:
            if plan.mode == "clips":  # clips are separate short volumes: nothing a session could keep
                result = run_clips(self.engine, volume, plan, progress=progress, cancel=cancel)
            elif session is None:
                result = self.engine.run(volume, plan, progress=progress, cancel=cancel)
            else:
                result = session.run(plan, progress=progress, cancel=cancel)
        return self._to_result(volume, plan, result)

    # -- helpers ---------------------------------------------------------------------------------------------------
    def _to_result(self, volume: Volume, plan: RunPlan, result: EngineResult) -> SegmentationResult:
        options, threshold_source = plan.options, plan.threshold_source
        warnings = list(plan.warnings) + list(result.notes)
        segments = []
        for p, (prompt, concept) in enumerate(zip(plan.prompts, plan.concepts)):
            objects = [
                ObjectInfo(o.object_id, p + 1, round(o.score, 4), o.voxels, o.slice_range,
                           {k: round(v, 4) for k, v in o.slice_scores.items()})
                for o in result.objects
                if o.prompt == p
            ]
            voxels = int((result.labels == p + 1).sum())
            ranges = [o.slice_range for o in objects if o.slice_range]
            segments.append(
                SegmentInfo(
                    prompt=prompt,
                    concept=concept,
                    label=p + 1,
                    voxels=voxels,
                    volume_ml=round(volume_ml(voxels, volume.spacing), 4),
                    score=max((o.score for o in objects), default=0.0),
                    slice_range=(min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None,
                    objects=objects,
                )
            )
            if voxels == 0:
                whose = " (the model's recommended one)" if threshold_source == "model" else ""
                warnings.append(f"Nothing found for '{prompt}' at threshold {options.threshold:g}{whose}.")
        labelmap = volume.with_array(result.labels, modality=None)
        confidence = volume.with_array(result.confidence, modality=None) if options.confidence_map else None
        return SegmentationResult(
            labelmap=labelmap,
            segments=segments,
            confidence=confidence,
            timings={k: round(v, 4) for k, v in result.timings.items()},
            options=options,
            model=self.bundle.source,
            warnings=warnings,
            threshold_source=threshold_source,
        )


class LocalSession:
    """One volume kept encoded by a :class:`LocalSegmenter` ("encode once, prompt many").

    :meth:`segment` takes the arguments of :meth:`LocalSegmenter.segment` without the volume and returns the same
    result a fresh call would; only the first call (or one with another window or slice axis) runs the ViT.
    Close the session (or use it in a ``with`` block) to free its features.
    """

    def __init__(self, segmenter: LocalSegmenter, volume: Volume) -> None:
        self.segmenter, self.volume = segmenter, volume
        self._session = VolumeSession(segmenter.engine, volume)

    def segment(
        self,
        prompts: Sequence[str],
        options: Optional[SegmentOptions] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
        concepts: Optional[Sequence[str]] = None,
    ) -> SegmentationResult:
        return self.segmenter._segment(self.volume, prompts, options, progress, cancel, concepts, self._session)

    @property
    def nbytes(self) -> int:
        """Bytes of features the session holds (device, host and temporary file together)."""
        return self._session.nbytes

    def close(self) -> None:
        with self.segmenter._lock:
            self._session.close()

    def __enter__(self) -> "LocalSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
