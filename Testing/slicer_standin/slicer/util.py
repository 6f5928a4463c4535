"""Stand-in for the ``slicer.util`` functions the module uses."""

from __future__ import annotations

import contextlib
import os
from types import SimpleNamespace
from typing import Optional

import numpy as np

import slicer
from vtk import vtkMatrix4x4

#: Answer the stand-in gives to ``confirmOkCancelDisplay`` (tests switch it).
confirm_answer = True


class VTKObservationMixin:
    def __init__(self) -> None:
        self._observations: list = []

    def addObserver(self, obj, event, method, priority: float = 0.0) -> None:
        tag = obj.AddObserver(event, method, priority)
        self._observations.append((obj, event, method, tag))

    def removeObserver(self, obj, event, method) -> None:
        for entry in list(self._observations):
            if entry[0] is obj and entry[1] == event and entry[2] == method:
                obj.RemoveObserver(entry[3])
                self._observations.remove(entry)

    def removeObservers(self, method=None) -> None:
        for obj, event, observed, tag in list(self._observations):
            if method is None or observed == method:
                obj.RemoveObserver(tag)
                self._observations.remove((obj, event, observed, tag))


class _PythonQtProxy:
    """Wraps a PyQt5 widget so Qt properties read and write as attributes, as PythonQt does in Slicer."""

    def __init__(self, widget) -> None:
        object.__setattr__(self, "_widget", widget)

    def _has_property(self, name: str) -> bool:
        return self._widget.metaObject().indexOfProperty(name) >= 0

    def __getattr__(self, name: str):
        if self._has_property(name):
            return self._widget.property(name)
        return getattr(self._widget, name)

    def __setattr__(self, name: str, value) -> None:
        if not self._has_property(name):
            raise AttributeError(f"{type(self._widget).__name__} has no Qt property {name!r}")
        if not self._widget.setProperty(name, value):
            raise AttributeError(f"could not set {type(self._widget).__name__}.{name} to {value!r}")


def loadUI(path: str):
    """Load a ``.ui`` like Slicer's loader. Its signal/slot connections name C++ signatures (``vtkMRMLScene*``) that
    PyQt's ``uic`` cannot resolve, so they are made here by name, failing on any signal or slot a widget lacks."""
    import io
    import xml.etree.ElementTree as ET

    from qtpy import uic

    if not os.path.isfile(path):
        raise RuntimeError(f"UI file not found: {path}")
    tree = ET.parse(path)
    connections = tree.getroot().find("connections")
    wanted = []
    if connections is not None:
        wanted = [tuple(c.findtext(k) for k in ("sender", "signal", "receiver", "slot")) for c in connections]
        tree.getroot().remove(connections)
    buffer = io.BytesIO()
    tree.write(buffer, encoding="utf-8")
    buffer.seek(0)
    root = uic.loadUi(buffer)
    objects = {w.objectName(): w for w in [root, *root.findChildren(object)] if w.objectName()}
    for sender, signal, receiver, slot in wanted:
        bound = getattr(objects[sender], signal.split("(")[0])  # AttributeError: no such signal, as Qt would warn
        bound.connect(getattr(objects[receiver], slot.split("(")[0]))
    return root


def childWidgetVariables(widget) -> SimpleNamespace:
    from qtpy.QtWidgets import QWidget

    ui = SimpleNamespace()
    for child in widget.findChildren(QWidget):
        if child.objectName():
            setattr(ui, child.objectName(), _PythonQtProxy(child))
    return ui


def getNodesByClass(className: str, scene=None) -> list:
    """Nodes of ``className`` *or a subclass* (``IsA``), as a list, in scene order."""
    return list((scene or slicer.mrmlScene).GetNodesByClass(className))


def arrayFromVolume(volumeNode) -> np.ndarray:
    """The voxel array, indexed ``[k, j, i]`` (a view: changes show in the node, as in Slicer)."""
    return volumeNode.GetImageData().array


def updateVolumeFromArray(volumeNode, narray: np.ndarray) -> None:
    volumeNode._setVoxels(narray)


def _ijk_to_ras(volumeNode) -> np.ndarray:
    matrix = vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def updateSegmentBinaryLabelmapFromArray(narray, segmentationNode, segmentId: str, referenceVolumeNode=None) -> None:
    """Set a segment's voxels from a ``[k, j, i]`` array on the grid of ``referenceVolumeNode`` (or of the
    segmentation's reference geometry); the segment keeps that grid's IJK→RAS matrix as its image-to-world."""
    if referenceVolumeNode is not None:
        shape, ijk_to_ras = referenceVolumeNode.GetImageData().array.shape, _ijk_to_ras(referenceVolumeNode)
    else:
        shape, ijk_to_ras = segmentationNode._reference_shape, segmentationNode._reference_ijk_to_ras
    if tuple(narray.shape) != tuple(shape):
        raise ValueError(f"array shape {narray.shape} does not match the reference geometry {shape}")
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    if segment is None:
        raise ValueError(f"no segment {segmentId!r}")
    if not segmentationNode.GetSegmentation().IsSourceRepresentationBinaryLabelmap():
        # Slicer's SetBinaryLabelmapToSegment refuses other source representations and util turns that into this.
        raise RuntimeError("Importing of segment failed.")
    segment.labelmap = slicer.vtkOrientedImageData(np.array(narray, dtype=np.uint8), ijk_to_ras)
    segmentationNode.Modified()


def arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId: str, referenceVolumeNode=None) -> np.ndarray:
    """Segment voxels on the reference grid; the stand-in supports only the grid the segment was written on."""
    labelmap = segmentationNode.GetSegmentation().GetSegment(segmentId).labelmap
    if referenceVolumeNode is not None and not np.allclose(_ijk_to_ras(referenceVolumeNode), labelmap.ijk_to_ras):
        raise NotImplementedError("the stand-in does not resample segments")
    return labelmap.array


def startupEnvironment() -> dict:
    return dict(os.environ)


def pip_install(requirements) -> None:
    slicer.calls.append(("pip_install", list(requirements) if not isinstance(requirements, str) else requirements))


def confirmOkCancelDisplay(text: str, windowTitle: Optional[str] = None, **kwargs) -> bool:
    slicer.calls.append(("confirm", text))
    return confirm_answer


def errorDisplay(text: str, windowTitle: Optional[str] = None, **kwargs) -> None:
    slicer.calls.append(("error", text))


@contextlib.contextmanager
def tryWithErrorDisplay(message: Optional[str] = None, show: bool = True, waitCursor: bool = False):
    """Shows the error, then re-raises it, as Slicer's does: code after the ``with`` block does not run, and an
    error inside a Qt slot or timer callback escapes to the event loop."""
    try:
        yield
    except Exception as err:
        slicer.calls.append(("error", f"{message}\n{err}" if message else str(err)))
        raise


def setSliceViewerLayers(**kwargs) -> None:
    slicer.calls.append(("setSliceViewerLayers", kwargs))


def restart() -> None:
    slicer.calls.append(("restart",))
