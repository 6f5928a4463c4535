"""Project exceptions.

Every failure a *user* can cause (bad file, bad prompt, missing weights, no GPU) raises a subclass of
:class:`MedSam3Error` whose message says what was wrong and what to do. Front-ends (CLI, server, Slicer) catch
``MedSam3Error`` and show the message only; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "MedSam3Error",
    "InputError",
    "PromptError",
    "ModelError",
    "CheckpointError",
    "DeviceError",
    "Cancelled",
    "RemoteError",
]


class MedSam3Error(Exception):
    """Base class of all user-facing errors; ``str(err)`` is the one line shown to the user."""


class InputError(MedSam3Error):
    """Input image/volume is missing, unreadable, of an unsupported kind, or inconsistent."""


class PromptError(MedSam3Error):
    """A text prompt is empty or otherwise unusable."""


class ModelError(MedSam3Error):
    """A model path or name cannot be resolved, or the model cannot run the requested mode."""


class CheckpointError(ModelError):
    """A checkpoint file is corrupt, of an unknown format, or does not fit the architecture."""


class DeviceError(MedSam3Error):
    """The requested compute device is not available."""


class Cancelled(MedSam3Error):
    """The user cancelled a long-running operation; nothing has been written."""


class RemoteError(MedSam3Error):
    """A remote inference server refused, failed, or could not be reached."""
