"""Stand-in for the ``slicer`` package: a scene, the node classes, ``slicer.util`` and scripted-module bases.

Only what MedicalSAM3Slicer uses, with Slicer's semantics (see ``../README.md``). Tests may inspect what the module
asked Slicer to do through :data:`calls` (pip installs, dialogs, view changes).
"""

from types import SimpleNamespace

from .mrml import *  # noqa: F401,F403
from .mrml import vtkMRMLScene, vtkSlicerSegmentationsModuleLogic

mrmlScene = vtkMRMLScene()
dicomDatabase = None
#: What the module asked of the application: ("pip_install", args), ("confirm", text), ("error", text) ...
calls: list = []


class _Application:
    def connect(self, signature: str, slot) -> None:
        """PythonQt string connection; only ``aboutToQuit()`` is used (tests call :func:`quit` to emit it)."""
        if signature != "aboutToQuit()":
            raise AttributeError(f"stand-in application has no signal {signature}")
        _quit_slots.append(slot)

    def layoutManager(self):
        return None  # no views: like Slicer started without a main window

    def processEvents(self) -> None:
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()


_quit_slots: list = []


def quit() -> None:
    """Emit ``aboutToQuit`` like Slicer does on exit (test helper)."""
    for slot in list(_quit_slots):
        slot()


app = _Application()
modules = SimpleNamespace(segmentations=SimpleNamespace(logic=vtkSlicerSegmentationsModuleLogic))

from . import util  # noqa: E402,F401  (util uses the scene defined above)
