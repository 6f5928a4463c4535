"""Stand-in for CTK's ``ctkCollapsibleButton``: a titled group whose ``collapsed`` property hides its contents."""

from qtpy.QtCore import Property
from qtpy.QtWidgets import QGroupBox, QWidget


class ctkCollapsibleButton(QGroupBox):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._collapsed = False

    def setText(self, text: str) -> None:
        self.setTitle(text)

    def _text(self) -> str:
        return self.title()

    def isCollapsed(self) -> bool:
        return self._collapsed

    def setCollapsed(self, collapsed: bool) -> None:
        self._collapsed = bool(collapsed)
        self._applyCollapsed()

    def _applyCollapsed(self) -> None:
        for child in self.findChildren(QWidget):
            if child.parent() is self:
                child.setVisible(not self._collapsed)

    def showEvent(self, event) -> None:  # children added after setCollapsed (uic adds them later) follow it too
        if self._collapsed:
            self._applyCollapsed()
        super().showEvent(event)

    text = Property(str, _text, setText)
    collapsed = Property(bool, isCollapsed, setCollapsed)
