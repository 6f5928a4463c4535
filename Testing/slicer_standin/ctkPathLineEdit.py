"""Stand-in for CTK's ``ctkPathLineEdit``: a line edit with the ``currentPath`` property and its change signal."""

from qtpy.QtCore import Property, Signal
from qtpy.QtWidgets import QLineEdit


class ctkPathLineEdit(QLineEdit):
    currentPathChanged = Signal(str)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.textChanged.connect(self.currentPathChanged.emit)
        self._nameFilters: list = []

    def _currentPath(self) -> str:
        return self.text()

    def setCurrentPath(self, path: str) -> None:
        self.setText(path)

    def setNameFilters(self, filters) -> None:
        self._nameFilters = list(filters)

    currentPath = Property(str, _currentPath, setCurrentPath)
