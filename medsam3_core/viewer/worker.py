"""Inference off the GUI thread: a ``QThread`` that loads the segmenter once and runs one segmentation.

The thread talks to the window only through queued Qt signals (progress, success, failure, cancellation), so the
event loop keeps painting while the model runs. Cancel sets the shared :class:`~medsam3_core.progress.CancelToken`,
which the engine (or the remote client, which also cancels the server job) honours within one batch.

Prompting the same volume again reuses a volume session when the segmenter offers one (``open_session``: local and
remote segmenters do), so the second and later prompts run no ViT (local) or upload nothing (remote). One session is
kept per segmenter, for the volume last segmented: the viewer shows one volume at a time.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any, Callable, Optional, Sequence

from qtpy.QtCore import QThread, Signal

from medsam3_core.errors import Cancelled, MedSam3Error
from medsam3_core.io.geometry import Volume
from medsam3_core.progress import CancelToken, ProgressCallback
from medsam3_core.segmenter import SegmentationResult, Segmenter, SegmentOptions

__all__ = ["SegmenterFactory", "SegmentationThread"]

log = logging.getLogger(__name__)

#: Builds (and may load weights for) a segmenter; called on the worker thread, reports the ``"load"`` stage.
SegmenterFactory = Callable[[Optional[ProgressCallback]], Segmenter]

_MIN_INTERVAL_S = 0.05  # at most ~20 progress updates per second reach the GUI

_SESSIONS: "weakref.WeakKeyDictionary[Any, tuple[Volume, Any]]" = weakref.WeakKeyDictionary()
_SESSIONS_LOCK = threading.Lock()


def _session_for(segmenter: Segmenter, volume: Volume) -> Optional[Any]:
    """The segmenter's session on ``volume`` (opened, and the previous volume's closed, when the volume changes);
    ``None`` when the segmenter has no sessions."""
    opener = getattr(segmenter, "open_session", None)
    if opener is None:
        return None
    with _SESSIONS_LOCK:
        kept = _SESSIONS.get(segmenter)
        if kept is not None and kept[0] is volume:
            return kept[1]
        if kept is not None:
            kept[1].close()
        session = opener(volume)
        _SESSIONS[segmenter] = (volume, session)
        return session


class SegmentationThread(QThread):
    """Runs ``segmenter.segment(volume, concepts, options)`` once; the segmenter is created on first use and kept.

    Signals:
        progressed(stage, fraction), succeeded(SegmentationResult), failed(message), cancelled().
    """

    progressed = Signal(str, float)
    succeeded = Signal(object)
    failed = Signal(str)
    cancelled = Signal()

    def __init__(
        self,
        segmenter: SegmenterFactory,
        volume: Volume,
        concepts: Sequence[str],
        options: SegmentOptions,
        parent=None,
    ) -> None:
        super().__init__(parent)
        self._segmenter = segmenter
        self._volume = volume
        self._concepts = list(concepts)
        self._options = options
        self.token = CancelToken()
        self._last_emit = (None, 0.0)

    def cancel(self) -> None:
        """Ask the run to stop; ``cancelled`` is emitted once the worker has stopped."""
        self.token.cancel()

    def _progress(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        last_stage, last_time = self._last_emit
        if stage != last_stage or fraction >= 1.0 or now - last_time >= _MIN_INTERVAL_S:
            self._last_emit = (stage, now)
            self.progressed.emit(stage, float(fraction))

    def run(self) -> None:  # noqa: D102 (QThread entry point, runs on the worker thread)
        try:
            segmenter = self._segmenter(self._progress)
            self.token.raise_if_cancelled()
            session = _session_for(segmenter, self._volume)
            if session is not None:
                result: SegmentationResult = session.segment(
                    self._concepts, self._options, progress=self._progress, cancel=self.token
                )
            else:
                result = segmenter.segment(
                    self._volume, self._concepts, self._options, progress=self._progress, cancel=self.token
                )
            self.token.raise_if_cancelled()
        except Cancelled:
            self.cancelled.emit()
            return
        except MedSam3Error as err:
            self.failed.emit(str(err))
            return
        except Exception as err:  # a bug: keep the traceback in the log, show one line in the window
            log.exception("segmentation failed")
            self.failed.emit(f"Unexpected error ({type(err).__name__}: {err}); see the console for details.")
            return
        self.succeeded.emit(result)
