"""Stand-in for Slicer's ``qMRMLNodeComboBox``: lists scene nodes of ``nodeTypes``; optional "none" entry.

Declares the Qt properties the real widget has and the module's ``.ui`` sets (uic fails on any other), and the
PythonQt-style ``connect("currentNodeChanged(vtkMRMLNode*)", slot)`` the module uses.
"""

from qtpy.QtCore import Property, Signal
from qtpy.QtWidgets import QComboBox


class qMRMLNodeComboBox(QComboBox):
    currentNodeChanged = Signal(object)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._scene = None
        self._nodeTypes: list = []
        self._flags = {"showChildNodeTypes": True, "addEnabled": True, "removeEnabled": True, "noneEnabled": False,
                       "renameEnabled": False}
        self._noneDisplay = "None"
        self.currentIndexChanged.connect(lambda index: self.currentNodeChanged.emit(self.currentNode()))

    # -- PythonQt-style string connections ------------------------------------------------------------------------
    def connect(self, signature: str, slot) -> None:
        if signature != "currentNodeChanged(vtkMRMLNode*)":
            raise AttributeError(f"stand-in qMRMLNodeComboBox has no signal {signature}")
        self.currentNodeChanged.connect(slot)

    # -- scene ------------------------------------------------------------------------------------------------
    def setMRMLScene(self, scene) -> None:
        self._scene = scene
        self._refresh()

    def mrmlScene(self):
        return self._scene

    def _nodes(self) -> list:
        if self._scene is None:
            return []
        return [n for n in self._scene.GetNodes() if any(n.IsA(t) for t in self._nodeTypes)]

    def _refresh(self) -> None:
        current = self.currentNode()
        self.blockSignals(True)
        self.clear()
        if self._flags["noneEnabled"]:
            self.addItem(self._noneDisplay, None)
        for node in self._nodes():
            self.addItem(node.GetName(), node.GetID())
        self.blockSignals(False)
        self.setCurrentNode(current)

    def currentNode(self):
        node_id = self.currentData()
        return self._scene.GetNodeByID(node_id) if (self._scene is not None and node_id) else None

    def setCurrentNode(self, node) -> None:
        if node is not None and self.findData(node.GetID()) < 0:
            self._refresh_with(node)
        self.setCurrentIndex(self.findData(node.GetID()) if node is not None else (0 if self._flags["noneEnabled"]
                                                                                    else -1))

    def _refresh_with(self, node) -> None:
        self.blockSignals(True)
        self.addItem(node.GetName(), node.GetID())
        self.blockSignals(False)

    def _currentNodeID(self) -> str:
        return self.currentData() or ""

    def setCurrentNodeID(self, node_id: str) -> None:
        self.setCurrentNode(self._scene.GetNodeByID(node_id) if self._scene is not None and node_id else None)

    # -- designer properties --------------------------------------------------------------------------------------
    def _getNodeTypes(self) -> list:
        return list(self._nodeTypes)

    def setNodeTypes(self, types) -> None:
        self._nodeTypes = list(types)
        self._refresh()

    def _getNoneDisplay(self) -> str:
        return self._noneDisplay

    def setNoneDisplay(self, text: str) -> None:
        self._noneDisplay = text
        self._refresh()

    def _flag_property(name):  # noqa: N805 - class-body helper
        def getter(self) -> bool:
            return self._flags[name]

        def setter(self, value: bool) -> None:
            self._flags[name] = bool(value)
            self._refresh()

        return getter, setter

    _g, setShowChildNodeTypes = _flag_property("showChildNodeTypes")
    showChildNodeTypes = Property(bool, _g, setShowChildNodeTypes)
    _g, setAddEnabled = _flag_property("addEnabled")
    addEnabled = Property(bool, _g, setAddEnabled)
    _g, setRemoveEnabled = _flag_property("removeEnabled")
    removeEnabled = Property(bool, _g, setRemoveEnabled)
    _g, setNoneEnabled = _flag_property("noneEnabled")
    noneEnabled = Property(bool, _g, setNoneEnabled)
    _g, setRenameEnabled = _flag_property("renameEnabled")
    renameEnabled = Property(bool, _g, setRenameEnabled)
    del _g, _flag_property

    nodeTypes = Property("QStringList", _getNodeTypes, setNodeTypes)
    noneDisplay = Property(str, _getNoneDisplay, setNoneDisplay)
    currentNodeID = Property(str, _currentNodeID, setCurrentNodeID)
