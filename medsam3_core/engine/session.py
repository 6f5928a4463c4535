"""Volume sessions: encode a volume once, then answer any number of prompts on it.

A user exploring a scan asks for "liver", then "spleen", then "left kidney". Without a session each question runs
the ViT over every slice again, although only the text changed, and the ViT is by far the largest cost of SAM3
(about 3 s of a 300-slice volume on a large GPU, minutes on a CPU). A :class:`VolumeSession` keeps the volume's
encoding (:class:`~medsam3_core.engine.encoded_volume.EncodedVolume`: the ViT output and the tracker features of
every slice, in the feature store's tiers) between runs, so a new prompt costs its text, the detector heads and the
tracker. The result of a prompt is the very label map a fresh run would give: the stored features are the bits the
ViT produced, and everything downstream runs as in a fresh run.

The encoding belongs to one image setting (intensity window and slice axis); a run with other settings replaces it.
A session holds memory until :meth:`VolumeSession.close` (or the end of a ``with`` block).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from medsam3_core.engine.encoded_volume import EncodedVolume
from medsam3_core.engine.volume_engine import EngineResult, VolumeEngine
from medsam3_core.io.geometry import Volume
from medsam3_core.plan import ModelLimits, RunPlan, plan_run
from medsam3_core.progress import CancelToken, ProgressCallback
from medsam3_core.segmenter import SegmentOptions

__all__ = ["VolumeSession"]


class VolumeSession:
    """Runs of one :class:`VolumeEngine` on one volume that share the volume's encoding (module docstring)."""

    def __init__(self, engine: VolumeEngine, volume: Volume) -> None:
        self.engine, self.volume = engine, volume
        self._encoded: Optional[EncodedVolume] = None

    def run(
        self,
        plan: Union[RunPlan, Sequence[str]],
        options: Optional[SegmentOptions] = None,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[CancelToken] = None,
    ) -> EngineResult:
        """:meth:`VolumeEngine.run` on the session's volume, reusing (and completing) its encoding."""
        if not isinstance(plan, RunPlan):
            plan = plan_run(plan, options, ModelLimits.of(self.engine.bundle))
        options = plan.options
        if self._encoded is None or not self._encoded.matches(self.volume, options.window, options.slice_axis):
            self.close()
            self._encoded = self.engine.encode(self.volume, options, keep_vision=True)
        return self.engine.run(self.volume, plan, progress=progress, cancel=cancel, encoded=self._encoded)

    @property
    def nbytes(self) -> int:
        """Bytes the session's features take in all tiers (device, host, file)."""
        if self._encoded is None:
            return 0
        stores = [self._encoded.tracker_store, self._encoded.vision_store]
        return sum(sum(store.nbytes.values()) for store in stores if store is not None)

    def close(self) -> None:
        """Free the encoding (a later run encodes the volume again)."""
        if self._encoded is not None:
            self._encoded.close()
            self._encoded = None

    def __enter__(self) -> "VolumeSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
