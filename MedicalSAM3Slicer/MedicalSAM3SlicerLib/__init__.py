"""Slicer-independent parts of the MedicalSAM3Slicer module (no ``slicer``, ``qt`` or ``vtk`` imports).

Everything here runs and is tested in plain Python: the warm local server child and its process-tree shutdown, the
one segmentation path through the core's HTTP client, the thread runner, the processing-state table of the action
button, the typed parameter-node view, the dependency planner and the label map -> segments mapping.
The core (``medsam3_core``) is only imported lazily, because Slicer loads this package before it may be installed.
"""

from .dependencies import REQUIREMENTS, InstallError, Requirement, engine_folder, install_commands, missing_requirements
from .events import JobEvent
from .local_server import Endpoint, LocalServer, ServerConfig, WarmServer, default_python
from .parameters import FIELDS, GUI_BINDINGS, Parameters
from .remote import describe_server
from .request import RunRequest
from .segmentation import connection_work, segmentation_work
from .segments import (
    CONFIDENCE_TAG, SOURCE_TAG, TERMINOLOGY_TAG, SegmentData, segments_from_labelmap, summary_line, unique_names,
)
from .state import ProcessingState
from .thread import ThreadJob

__all__ = [
    "REQUIREMENTS", "InstallError", "Requirement", "engine_folder", "install_commands", "missing_requirements",
    "JobEvent", "Endpoint", "LocalServer", "ServerConfig", "WarmServer", "default_python", "FIELDS", "GUI_BINDINGS",
    "Parameters", "describe_server", "RunRequest", "connection_work", "segmentation_work", "CONFIDENCE_TAG",
    "SOURCE_TAG", "TERMINOLOGY_TAG", "SegmentData", "segments_from_labelmap", "summary_line", "unique_names",
    "ProcessingState", "ThreadJob",
]
