"""Typed view of the module's parameter node (a ``vtkMRMLScriptedModuleNode`` that is saved with the scene).

MRML stores parameters as strings. Writing ``"true" if x else "false"`` and parsing it back at every call site is
how values drift (a threshold saved as ``"0.5 "``, a boolean read as truthy ``"false"``). Here each parameter is
declared once with its type and default, and attribute access converts both ways::

    params = Parameters(parameterNode)
    params.threshold = 0.4          # stored as "0.4"
    params.cleanup                  # -> bool, default False when never set

Node references (input volume, output segmentation) go through the node's reference API, not strings, so the
scene keeps them valid when nodes are renamed or the scene is saved and reloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["Parameters", "Field", "FIELDS", "GUI_BINDINGS", "MODEL_SOURCES", "DEVICES"]

MODEL_SOURCES = ("demo", "checkpoint", "remote")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class Field:
    """One persisted parameter: MRML name, Python type, default, and optional allowed values."""

    name: str
    kind: type
    default: Any
    choices: tuple = ()

    def parse(self, text: str) -> Any:
        """String from the node → typed value; unset, malformed or unknown values give the default."""
        if text == "":
            return self.default
        try:
            value = _PARSERS[self.kind](text)
        except ValueError:
            return self.default
        return value if not self.choices or value in self.choices else self.default

    def format(self, value: Any) -> str:
        if self.kind is bool:
            return "true" if value else "false"
        value = self.kind(value)
        if self.choices and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(map(str, self.choices))}, got {value!r}")
        return repr(value) if self.kind is float else str(value)


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError(text)


_PARSERS: dict[type, Callable[[str], Any]] = {str: str, bool: _parse_bool, int: int, float: float}

FIELDS: dict[str, Field] = {f.name: f for f in (
    Field("prompts", str, ""),
    Field("modelSource", str, "demo", MODEL_SOURCES),
    Field("checkpointPath", str, ""),
    Field("serverUrl", str, "http://localhost:8000"),
    Field("device", str, "auto", DEVICES),
    Field("mode", str, "track", ("track", "detect", "clips")),
    Field("useModelThreshold", bool, True),  # the model's recommended threshold instead of ``threshold``
    Field("threshold", float, 0.5),
    Field("window", str, "auto"),
    Field("sliceAxis", str, "axial", ("axial", "coronal", "sagittal")),
    Field("cleanup", bool, False),
)}


#: How each parameter shows in the panel: ``(parameter, widget object name, Qt property, change signal)``. The widget
#: writes its parameter on the signal; the parameter writes the widget only when the two differ, so a refresh never
#: rewrites the text being typed (which would move the cursor to the end). The model source combo box is bound by
#: its item data, not its text, and node selectors by node reference, so neither is listed here.
GUI_BINDINGS: tuple[tuple[str, str, str, str], ...] = (
    ("prompts", "promptsTextEdit", "plainText", "textChanged"),
    ("checkpointPath", "checkpointPathLineEdit", "currentPath", "currentPathChanged"),
    ("serverUrl", "serverUrlLineEdit", "text", "textChanged"),
    ("device", "deviceComboBox", "currentText", "currentTextChanged"),
    ("mode", "modeComboBox", "currentText", "currentTextChanged"),
    ("useModelThreshold", "modelThresholdCheckBox", "checked", "toggled"),
    ("threshold", "thresholdSliderWidget", "value", "valueChanged"),
    ("window", "windowComboBox", "currentText", "currentTextChanged"),
    ("sliceAxis", "sliceAxisComboBox", "currentText", "currentTextChanged"),
    ("cleanup", "cleanupCheckBox", "checked", "toggled"),
)


class Parameters:
    """Attribute access to :data:`FIELDS` on any object with ``GetParameter(name) -> str`` and
    ``SetParameter(name, str)`` (Slicer's ``vtkMRMLScriptedModuleNode``)."""

    def __init__(self, node: Any) -> None:
        object.__setattr__(self, "node", node)

    def __getattr__(self, name: str) -> Any:
        field = FIELDS.get(name)
        if field is None:
            raise AttributeError(name)
        return field.parse(self.node.GetParameter(name) or "")

    def __setattr__(self, name: str, value: Any) -> None:
        field = FIELDS.get(name)
        if field is None:
            raise AttributeError(f"unknown parameter {name!r}")
        text = field.format(value)
        if self.node.GetParameter(name) != text:  # avoid Modified events (and GUI refresh loops) for no change
            self.node.SetParameter(name, text)

    def set_defaults(self) -> None:
        """Fill parameters that were never set (a new scene), leaving saved values alone."""
        for name, field in FIELDS.items():
            if not self.node.GetParameter(name):
                self.node.SetParameter(name, field.format(field.default))

    def prompt_list(self) -> list[str]:
        """Prompts, one per line, as the command line would receive them as arguments: blank lines skipped and
        surrounding spaces trimmed, nothing else. Synonyms and duplicates are the core's business
        (``medsam3_core.prompts.resolve_prompts``), so Slicer and the command line give the same label maps."""
        return [line.strip() for line in self.prompts.splitlines() if line.strip()]
