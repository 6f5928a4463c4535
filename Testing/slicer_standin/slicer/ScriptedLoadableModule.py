"""Stand-in for ``slicer.ScriptedLoadableModule``: the four base classes of a scripted module."""

from __future__ import annotations

import logging
import os
import sys
import unittest
from types import SimpleNamespace

import slicer

__all__ = ["ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
           "ScriptedLoadableModuleTest"]


class ScriptedLoadableModule:
    def __init__(self, parent=None) -> None:
        self.parent = parent if parent is not None else SimpleNamespace()
        self.moduleName = type(self).__name__


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None) -> None:
        from qtpy.QtWidgets import QVBoxLayout, QWidget

        self.moduleName = type(self).__name__[: -len("Widget")]
        if parent is None:
            parent = QWidget()
            QVBoxLayout(parent)
            parent.isEntered = True
        self.parent = parent
        self.layout = parent.layout()

    def resourcePath(self, filename: str) -> str:
        module_dir = os.path.dirname(sys.modules[type(self).__module__].__file__)
        return os.path.join(module_dir, "Resources", filename)

    def setup(self) -> None:
        pass

    def onReload(self) -> None:
        """Slicer re-imports the module file and rebuilds the widget; the stand-in records the request."""
        slicer.calls.append(("reloadScriptedModule", self.moduleName))


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None) -> None:
        name = type(self).__name__
        self.moduleName = name[: -len("Logic")] if name.endswith("Logic") else name

    def getParameterNode(self):
        """The module's singleton parameter node (created on first use), as in Slicer."""
        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
            node.SingletonTag = self.moduleName
            node.SetAttribute("ModuleName", self.moduleName)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message: str, msec: int = 0) -> None:
        logging.info(message)
