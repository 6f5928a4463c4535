"""Stand-in for Slicer's ``qMRMLWidget``: the root of a module panel; ``setMRMLScene`` emits ``mrmlSceneChanged``,
which the ``.ui`` connects to every MRML widget inside, so one call hands the scene to all of them."""

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QWidget


class qMRMLWidget(QWidget):
    mrmlSceneChanged = Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):
        return self._scene
