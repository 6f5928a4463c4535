"""Turn the signals that end a program (Ctrl-C, ``kill``, a closed terminal) into a clean cancel.

Why one mechanism: by default SIGTERM and SIGHUP kill Python on the spot (no cleanup, exit status -15/-1) and SIGINT
raises ``KeyboardInterrupt`` wherever the program happens to be, for instance between writing a label map and its
report. Every long-running front-end (``infer``, ``batch``, ``serve``, training) instead wraps its work in
:func:`cancel_on_signals`:

* the **first** SIGINT, SIGTERM or SIGHUP sets a :class:`~medsam3_core.progress.CancelToken`. Work checks it where
  stopping is safe: the engine between batches, the export before it publishes any file, the trainer after an
  optimiser step (it writes its checkpoint, then stops). The front-end then exits with status 3;
* inside :meth:`SignalCancel.immediately` (work that leaves nothing behind, such as loading a model), the first
  signal raises :class:`~medsam3_core.errors.Cancelled` at once instead of waiting for the next check;
* a **second** signal aborts hard with ``KeyboardInterrupt``, for a user who does not want to wait for the current
  batch. ``finally`` blocks and the atomic writers' clean-up still run, so nothing half-written is left either.

Handlers can only be installed from the main thread; elsewhere (a Slicer worker thread, a test's server thread) the
context manager installs nothing and the token is cancelled only by whoever holds it. The previous handlers are
restored on exit.

Reuse in a new command::

    with cancel_on_signals() as signals:
        with signals.immediately():
            model = load_model(...)
        run_the_work(model, cancel=signals.token)      # raises Cancelled after a signal -> exit 3
"""

from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Iterator, Optional

from medsam3_core.errors import Cancelled
from medsam3_core.progress import CancelToken

__all__ = ["CANCEL_SIGNALS", "SignalCancel", "cancel_on_signals"]

# SIGHUP does not exist on Windows; there the console's Ctrl-C and Ctrl-Break arrive as SIGINT/SIGBREAK.
CANCEL_SIGNALS: tuple[int, ...] = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGBREAK") if hasattr(signal, name)
)


class SignalCancel:
    """The state behind :func:`cancel_on_signals`: its ``token``, the first signal received, and the handler."""

    def __init__(self, token: Optional[CancelToken] = None) -> None:
        self.token = token if token is not None else CancelToken()
        self.received: Optional[int] = None  # number of the first signal, for messages
        self._immediate = 0

    @property
    def signal_name(self) -> str:
        """``"SIGTERM"`` etc. for the first signal received (``""`` before any)."""
        return signal.Signals(self.received).name if self.received is not None else ""

    def handle(self, signum: int, frame: Optional[FrameType] = None) -> None:
        """The signal handler: first signal cancels (at once inside :meth:`immediately`), a second one aborts."""
        if self.received is not None:
            raise KeyboardInterrupt(f"second signal ({signal.Signals(signum).name}): aborting")
        self.received = signum
        self.token.cancel()
        if self._immediate:  # a KeyboardInterrupt, so that no ``except Exception`` on the way can swallow it
            raise KeyboardInterrupt(self.signal_name)

    @contextlib.contextmanager
    def immediately(self) -> Iterator[None]:
        """A region where the first signal raises :class:`Cancelled` right away instead of setting the token only.

        Use it for work that is safe to abandon at any point and may take long without checking the token, such as
        reading weights. Entering it after a signal already arrived raises at once.
        """
        self.token.raise_if_cancelled()
        self._immediate += 1
        try:
            yield
        except KeyboardInterrupt:
            if self.received is None:
                raise
            raise Cancelled(f"Cancelled ({self.signal_name}); nothing was written.") from None
        finally:
            self._immediate -= 1


@contextlib.contextmanager
def cancel_on_signals(token: Optional[CancelToken] = None) -> Iterator[SignalCancel]:
    """Handle SIGINT, SIGTERM and SIGHUP as a cancel of ``token`` (a new one if ``None``) while the block runs.

    Yields the :class:`SignalCancel` whose ``token`` the work must check; see the module docstring for the rules.
    """
    state = SignalCancel(token)
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    previous = {}
    try:
        for signum in CANCEL_SIGNALS:
            previous[signum] = signal.signal(signum, state.handle)
        yield state
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
