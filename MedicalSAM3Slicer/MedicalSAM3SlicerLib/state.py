"""Processing states of the module and what the one action button shows in each.

The "Segment by text" button doubles as "Cancel" while a run is under way. Deriving its text, enabled flag and
tooltip from a single state value (instead of toggling them at each call site) keeps the button honest: it can never
read "Cancel" when there is nothing to cancel, nor stay disabled after a failure.
"""

from __future__ import annotations

import enum

__all__ = ["ProcessingState"]


class ProcessingState(enum.Enum):
    """Where a segmentation run stands; ``IDLE`` and ``FAILED`` accept a new run."""

    IDLE = "idle"
    STARTING = "starting"
    RUNNING = "running"
    IMPORTING = "importing"
    CANCELLING = "cancelling"
    FAILED = "failed"

    @property
    def busy(self) -> bool:
        """True while a run owns the GUI (inputs are locked)."""
        return self not in (ProcessingState.IDLE, ProcessingState.FAILED)

    @property
    def button_text(self) -> str:
        return _BUTTON[self][0]

    @property
    def button_enabled(self) -> bool:
        """Cancel is possible while starting or running; importing and cancelling must finish on their own."""
        return self not in (ProcessingState.IMPORTING, ProcessingState.CANCELLING)

    @property
    def tooltip(self) -> str:
        return _BUTTON[self][1]


_BUTTON = {
    ProcessingState.IDLE: ("Segment by text", "Segment the input volume: one segment per prompt line."),
    ProcessingState.STARTING: ("Cancel", "Starting the model (the first run also loads the weights). Click to cancel."),
    ProcessingState.RUNNING: ("Cancel", "Segmenting; click to stop. Nothing is changed in the scene until it ends."),
    ProcessingState.IMPORTING: ("Importing...", "Writing the result into the output segmentation."),
    ProcessingState.CANCELLING: ("Cancelling...", "Stopping the run; the scene is left unchanged."),
    ProcessingState.FAILED: ("Segment by text", "The last run failed (see the status line). Click to try again."),
}
