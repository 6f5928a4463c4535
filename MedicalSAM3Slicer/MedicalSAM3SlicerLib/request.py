"""What the user asked for, checked before anything starts: prompts, model source and the run options.

Validating here (plain Python, tested without Slicer) gives the user one clear sentence about the first thing that
is wrong, before a process is launched or a scene node is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional
from urllib.parse import urlparse

from .local_server import ServerConfig
from .parameters import DEVICES, MODEL_SOURCES, Parameters

__all__ = ["RunRequest"]


@dataclass
class RunRequest:
    """One "Segment by text" click.

    Attributes:
        prompts: concepts, one per segment, in label order.
        model_source: ``demo`` (bundled demo model), ``checkpoint`` (a local model file or folder) or ``remote``.
        checkpoint: model file/folder for ``checkpoint``.
        server_url, api_key: server for ``remote``.
        threshold: minimum detection score, or ``None`` for the model's recommended threshold (then no
            ``--threshold`` is passed and the core uses what the model states).
        device, mode, window, slice_axis, cleanup: passed to the core unchanged.
    """

    prompts: list[str]
    model_source: str = "demo"
    checkpoint: str = ""
    server_url: str = ""
    api_key: str = field(default="", repr=False)
    device: str = "auto"
    mode: str = "track"
    threshold: Optional[float] = None
    window: str = ""
    slice_axis: str = "axial"
    cleanup: bool = False

    @classmethod
    def from_parameters(cls, params: Parameters, api_key: str = "") -> "RunRequest":
        return cls(
            prompts=params.prompt_list(), model_source=params.modelSource, checkpoint=params.checkpointPath,
            server_url=params.serverUrl.strip(), api_key=api_key, device=params.device, mode=params.mode,
            threshold=None if params.useModelThreshold else params.threshold, window=params.window.strip(),
            slice_axis=params.sliceAxis,
            cleanup=params.cleanup,
        )

    @property
    def remote(self) -> bool:
        return self.model_source == "remote"

    @property
    def model(self) -> str:
        """The model a local server serves, or the server URL for a remote run (shown in reports)."""
        if self.model_source == "checkpoint":
            return self.checkpoint
        return self.server_url if self.remote else "demo"

    def validate(self) -> None:
        """Raise ``ValueError`` with one actionable sentence for the first problem found."""
        if not self.prompts:
            raise ValueError("Type at least one prompt (one concept per line, e.g. 'liver').")
        if self.model_source not in MODEL_SOURCES:
            raise ValueError(f"Unknown model source {self.model_source!r}.")
        if self.model_source == "checkpoint":
            if not self.checkpoint:
                raise ValueError("Choose a model checkpoint file or folder, or select the demo model.")
            if not os.path.exists(self.checkpoint):
                raise ValueError(f"The model checkpoint {self.checkpoint!r} does not exist.")
        if self.remote:
            url = urlparse(self.server_url)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ValueError(f"Server URL must look like http://host:port, got {self.server_url!r}.")
        if self.device not in DEVICES:
            raise ValueError(f"Device must be one of {', '.join(DEVICES)}.")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError("Threshold must be between 0 and 1.")

    def window_option(self) -> Optional[str]:
        """The window as the core's ``SegmentOptions.window`` takes it: None (automatic), else the text as typed.

        Preset names and ``CENTRE,WIDTH`` are parsed by the core (``medsam3_core.engine.preprocess.parse_window``)
        on the server that runs the model, so there is one table of presets and one parser; a typo comes back as
        the core's one-line error naming the presets."""
        text = self.window.strip()
        return None if not text or text.lower() == "auto" else text

    def server_config(self) -> ServerConfig:
        """The local server a local run needs (the model and device it serves)."""
        return ServerConfig(model=self.model, device=self.device)

    def options_dict(self) -> dict[str, Any]:
        """Keyword arguments of ``medsam3_core.segmenter.SegmentOptions`` (threshold ``None``: the served model's
        recommended one)."""
        return {"threshold": self.threshold, "window": self.window_option(), "slice_axis": self.slice_axis,
                "mode": self.mode, "cleanup": self.cleanup}
