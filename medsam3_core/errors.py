"""Project exceptions.

Every failure a *user* can cause (bad file, bad prompt, missing weights, no GPU) raises a subclass of
:class:`MedSam3Error` whose message says what was wrong and what to do. Front-ends (CLI, server, Slicer) catch
``MedSam3Error`` and show the message only; anything else is a bug and keeps its traceback.

Messages name settings in plain words ("the threshold"), never a front-end's spelling of them: an error about one
setting carries its name in ``field`` (the :class:`~medsam3_core.segmenter.SegmentOptions` field, or a model card's
key), and each front-end shows that in its own terms (the CLI as ``--threshold``, Slicer as its widget).
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "MedSam3Error",
    "InputError",
    "SettingError",
    "PromptError",
    "ModelError",
    "CheckpointError",
    "DeviceError",
    "Cancelled",
    "RemoteError",
]


class MedSam3Error(Exception):
    """Base class of all user-facing errors; ``str(err)`` is the one line shown to the user.

    ``field`` names the setting the error is about, when it is about one (``None`` otherwise).
    """

    def __init__(self, *args: object, field: Optional[str] = None) -> None:
        super().__init__(*args)
        self.field = field


class InputError(MedSam3Error):
    """Input image/volume is missing, unreadable, of an unsupported kind, or inconsistent."""


class SettingError(InputError):
    """A run setting (threshold, window, mode …) is out of range or malformed; ``field`` names it."""


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
