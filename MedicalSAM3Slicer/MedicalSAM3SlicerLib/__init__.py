"""Slicer-independent parts of the MedicalSAM3Slicer module (no ``slicer``, ``qt`` or ``vtk`` imports).

Everything here runs and is tested in plain Python: the background-process runner speaking the CLI's JSON-lines
protocol, the thread runner for remote servers, the processing-state table of the action button, the typed
parameter-node view, the dependency planner, NRRD hand-over files and the label map → segments mapping.
The core (``medsam3_core``) is only imported lazily, because Slicer loads this package before it may be installed.
"""

from .dependencies import REQUIREMENTS, InstallError, Requirement, core_source, install_commands, missing_requirements
from .events import JobEvent, parse_event_line
from .nrrd import read_nrrd, write_nrrd
from .parameters import FIELDS, Parameters
from .process import CliJob, default_python, infer_command
from .remote import describe_server
from .request import RunRequest
from .segments import CONFIDENCE_TAG, SOURCE_TAG, SegmentData, segments_from_labelmap, summary_line
from .state import ProcessingState
from .thread import ThreadJob

__all__ = [
    "REQUIREMENTS", "InstallError", "Requirement", "core_source", "install_commands", "missing_requirements",
    "JobEvent", "parse_event_line", "read_nrrd", "write_nrrd", "FIELDS", "Parameters", "CliJob", "default_python",
    "infer_command", "describe_server", "RunRequest", "CONFIDENCE_TAG", "SOURCE_TAG", "SegmentData",
    "segments_from_labelmap", "summary_line", "ProcessingState", "ThreadJob",
]
