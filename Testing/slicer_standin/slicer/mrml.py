"""Stand-in MRML scene and the node classes the module touches, following Slicer's RAS/IJK conventions."""

from __future__ import annotations

import itertools
from typing import Any, Optional

import numpy as np

from vtk import vtkCommand, vtkMatrix4x4, vtkObject

__all__ = [
    "vtkMRMLScene", "vtkMRMLNode", "vtkMRMLScriptedModuleNode", "vtkMRMLScalarVolumeNode",
    "vtkMRMLLabelMapVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLSegmentationDisplayNode", "vtkSegmentation",
    "vtkSegment", "vtkOrientedImageData", "vtkMRMLSubjectHierarchyNode", "vtkSlicerSegmentationsModuleLogic",
    "NODE_CLASSES", "BINARY_LABELMAP", "CLOSED_SURFACE",
]


class vtkMRMLNode(vtkObject):
    def __init__(self) -> None:
        super().__init__()
        self._id = ""
        self._name = ""
        self._attributes: dict[str, str] = {}
        self._references: dict[str, str] = {}
        self._scene: Optional["vtkMRMLScene"] = None
        self._modifyDepth = 0
        self._pendingModified = False
        self._transformNodeID: Optional[str] = None
        self.SingletonTag: Optional[str] = None

    def GetID(self) -> str:
        return self._id

    def GetName(self) -> str:
        return self._name

    def SetName(self, name: str) -> None:
        self._name = name
        self.Modified()

    def GetScene(self):
        return self._scene

    def SetAttribute(self, name: str, value: str) -> None:
        self._attributes[name] = value

    def GetAttribute(self, name: str) -> Optional[str]:
        return self._attributes.get(name)

    def Modified(self) -> None:
        if self._modifyDepth:
            self._pendingModified = True
        else:
            self.InvokeEvent(vtkCommand.ModifiedEvent)

    def StartModify(self) -> int:
        self._modifyDepth += 1
        return self._modifyDepth - 1

    def EndModify(self, previous: int) -> int:
        self._modifyDepth = previous
        if not previous and self._pendingModified:
            self._pendingModified = False
            self.InvokeEvent(vtkCommand.ModifiedEvent)
        return previous

    def SetNodeReferenceID(self, role: str, node_id: Optional[str]) -> None:
        if (node_id or "") != self._references.get(role, ""):
            self._references[role] = node_id or ""
            self.Modified()

    def GetNodeReferenceID(self, role: str) -> Optional[str]:
        return self._references.get(role) or None

    def GetNodeReference(self, role: str):
        node_id = self.GetNodeReferenceID(role)
        return self._scene.GetNodeByID(node_id) if (node_id and self._scene) else None

    # transformable nodes
    def GetTransformNodeID(self) -> Optional[str]:
        return self._transformNodeID

    def SetAndObserveTransformNodeID(self, node_id: Optional[str]) -> None:
        self._transformNodeID = node_id


class vtkMRMLScriptedModuleNode(vtkMRMLNode):
    """Parameter node: string parameters, "" when unset (as in Slicer)."""

    def __init__(self) -> None:
        super().__init__()
        self._parameters: dict[str, str] = {}

    def SetParameter(self, name: str, value: str) -> None:
        if self._parameters.get(name) != str(value):
            self._parameters[name] = str(value)
            self.Modified()

    def GetParameter(self, name: str) -> str:
        return self._parameters.get(name, "")

    def GetParameterNames(self) -> list[str]:
        return list(self._parameters)


class vtkOrientedImageData(vtkObject):
    """Voxels ``[k, j, i]`` plus the image-to-world (IJK→RAS) matrix, like Slicer's ``vtkOrientedImageData``."""

    def __init__(self, array: Optional[np.ndarray] = None, ijk_to_ras: Optional[np.ndarray] = None) -> None:
        super().__init__()
        self.array = array
        self.ijk_to_ras = np.eye(4) if ijk_to_ras is None else np.array(ijk_to_ras, dtype=float)

    def GetImageToWorldMatrix(self, matrix: vtkMatrix4x4) -> None:
        for r in range(4):
            for c in range(4):
                matrix.SetElement(r, c, self.ijk_to_ras[r, c])

    def GetDimensions(self) -> tuple[int, int, int]:
        k, j, i = self.array.shape[:3]
        return (i, j, k)

    def DeepCopy(self, other: "vtkOrientedImageData") -> None:
        self.array = None if other.array is None else other.array.copy()
        self.ijk_to_ras = other.ijk_to_ras.copy()


class vtkMRMLScalarVolumeNode(vtkMRMLNode):
    """Volume geometry exactly as ``vtkMRMLVolumeNode`` stores it: spacing, RAS origin and ``IJKToRASDirections``
    (rows R, A, S; columns the i, j, k axes); ``GetIJKToRASMatrix`` composes ``M[r][c] = dir[r][c]·spacing[c]``."""

    def __init__(self) -> None:
        super().__init__()
        self._spacing = [1.0, 1.0, 1.0]
        self._origin = [0.0, 0.0, 0.0]
        self._directions = np.eye(3)
        self._image: Optional[vtkOrientedImageData] = None

    def SetSpacing(self, *spacing) -> None:
        self._spacing = [float(s) for s in (spacing[0] if len(spacing) == 1 else spacing)]
        self.Modified()

    def GetSpacing(self) -> tuple[float, float, float]:
        return tuple(self._spacing)

    def SetOrigin(self, *origin) -> None:
        self._origin = [float(o) for o in (origin[0] if len(origin) == 1 else origin)]
        self.Modified()

    def GetOrigin(self) -> tuple[float, float, float]:
        return tuple(self._origin)

    def SetIJKToRASDirections(self, *dirs) -> None:
        """``SetIJKToRASDirections(dirs[3][3])`` (rows R, A, S; columns i, j, k) or the 9-value form, which Slicer
        also takes row by row: ``(ir, jr, kr, ia, ja, ka, is, js, ks)``."""
        if len(dirs) == 9:
            self._directions = np.array(dirs, dtype=float).reshape(3, 3)
        else:
            self._directions = np.array(dirs[0], dtype=float).reshape(3, 3)
        self.Modified()

    def GetIJKToRASDirections(self, dirs) -> None:
        for r in range(3):
            for c in range(3):
                dirs[r][c] = float(self._directions[r, c])

    def GetIJKToRASMatrix(self, matrix: vtkMatrix4x4) -> None:
        for r in range(3):
            for c in range(3):
                matrix.SetElement(r, c, self._directions[r, c] * self._spacing[c])
            matrix.SetElement(r, 3, self._origin[r])
        for c in range(3):
            matrix.SetElement(3, c, 0.0)
        matrix.SetElement(3, 3, 1.0)

    def SetIJKToRASMatrix(self, matrix: vtkMatrix4x4) -> None:
        m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        spacing = np.linalg.norm(m[:3, :3], axis=0)
        self._spacing = list(spacing)
        self._directions = m[:3, :3] / spacing
        self._origin = list(m[:3, 3])
        self.Modified()

    def GetImageData(self):
        return self._image

    def _setVoxels(self, array: np.ndarray) -> None:
        self._image = vtkOrientedImageData(np.array(array))
        self.Modified()


class vtkMRMLLabelMapVolumeNode(vtkMRMLScalarVolumeNode):
    pass


class vtkSegment(vtkObject):
    def __init__(self, name: str = "", color=(0.5, 0.5, 0.5)) -> None:
        super().__init__()
        self._name = name
        self._color = tuple(float(c) for c in color)
        self._tags: dict[str, str] = {}
        self.labelmap = vtkOrientedImageData()

    def GetName(self) -> str:
        return self._name

    def SetName(self, name: str) -> None:
        self._name = name

    def GetColor(self) -> tuple[float, float, float]:
        return self._color

    def SetColor(self, *color) -> None:
        self._color = tuple(float(c) for c in (color[0] if len(color) == 1 else color))

    def SetTag(self, tag: str, value: Any) -> None:
        self._tags[tag] = str(value)

    def GetTag(self, tag: str, value) -> bool:
        """``bool GetTag(std::string tag, std::string& value)``: pass a ``vtk.reference``."""
        if tag not in self._tags:
            return False
        value.set(self._tags[tag])
        return True

    def HasTag(self, tag: str) -> bool:
        return tag in self._tags


BINARY_LABELMAP = "Binary labelmap"
CLOSED_SURFACE = "Closed surface"


class vtkSegmentation(vtkObject):
    """Ordered segments with generated ids ``Segment_N`` (as Slicer generates them) and a source representation
    (binary labelmap by default; closed surface for RTSTRUCT or model imports), which labelmap writes require."""

    def __init__(self) -> None:
        super().__init__()
        self._segments: dict[str, vtkSegment] = {}
        self._counter = itertools.count(1)
        self._source = BINARY_LABELMAP

    def GetSourceRepresentationName(self) -> str:
        return self._source

    def SetSourceRepresentationName(self, name: str) -> None:
        self._source = name

    def IsSourceRepresentationBinaryLabelmap(self) -> bool:
        return self._source == BINARY_LABELMAP

    def AddEmptySegment(self, segmentId: str = "", segmentName: str = "", color=None) -> str:
        if not segmentId:
            segmentId = f"Segment_{next(self._counter)}"
            while segmentId in self._segments:
                segmentId = f"Segment_{next(self._counter)}"
        segment = vtkSegment(segmentName or segmentId, color if color is not None else (0.5, 0.5, 0.5))
        self._segments[segmentId] = segment
        self.InvokeEvent("SegmentAdded")
        return segmentId

    def RemoveSegment(self, segmentId: str) -> None:
        self._segments.pop(segmentId, None)

    def GetSegment(self, segmentId: str) -> Optional[vtkSegment]:
        return self._segments.get(segmentId)

    def GetSegmentIdBySegmentName(self, name: str) -> str:
        for segment_id, segment in self._segments.items():
            if segment.GetName().lower() == name.lower():  # Slicer compares names case-insensitively
                return segment_id
        return ""

    def GetNumberOfSegments(self) -> int:
        return len(self._segments)

    def GetNthSegmentID(self, index: int) -> str:
        return list(self._segments)[index]

    def GetNthSegment(self, index: int) -> vtkSegment:
        return list(self._segments.values())[index]

    def GetSegmentIDs(self) -> list[str]:
        return list(self._segments)


class vtkMRMLSegmentationDisplayNode(vtkMRMLNode):
    def __init__(self) -> None:
        super().__init__()
        self.visibility = True

    def SetVisibility(self, visible: bool) -> None:
        self.visibility = bool(visible)


class vtkMRMLSegmentationNode(vtkMRMLNode):
    def __init__(self) -> None:
        super().__init__()
        self._segmentation = vtkSegmentation()
        self._display: Optional[vtkMRMLSegmentationDisplayNode] = None
        self._reference_ijk_to_ras: Optional[np.ndarray] = None
        self._reference_shape: Optional[tuple] = None
        self.closedSurface = False

    def GetSegmentation(self) -> vtkSegmentation:
        return self._segmentation

    def CreateDefaultDisplayNodes(self) -> None:
        if self._display is None:
            self._display = self._scene.AddNewNodeByClass("vtkMRMLSegmentationDisplayNode")

    def GetDisplayNode(self):
        return self._display

    def SetReferenceImageGeometryParameterFromVolumeNode(self, volume: vtkMRMLScalarVolumeNode) -> None:
        matrix = vtkMatrix4x4()
        volume.GetIJKToRASMatrix(matrix)
        self._reference_ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        self._reference_shape = volume.GetImageData().array.shape

    def CreateClosedSurfaceRepresentation(self) -> bool:
        self.closedSurface = True
        return True

    def GetBinaryLabelmapRepresentation(self, segmentId: str, output: vtkOrientedImageData) -> bool:
        segment = self._segmentation.GetSegment(segmentId)
        if segment is None or segment.labelmap.array is None:
            return False
        output.DeepCopy(segment.labelmap)
        return True

    def GetSegmentCenterRAS(self, segmentId: str):
        labelmap = self._segmentation.GetSegment(segmentId).labelmap
        kji = np.argwhere(labelmap.array > 0)
        if not len(kji):
            return None
        ijk1 = np.r_[kji.mean(axis=0)[::-1], 1.0]
        return tuple((labelmap.ijk_to_ras @ ijk1)[:3])


class vtkSlicerSegmentationsModuleLogic(vtkObject):
    """``slicer.modules.segmentations.logic()``: the one labelmap import the module uses."""

    imports = 0  # how many imports ran (a test checks one per run, not one per prompt)

    def ImportLabelmapToSegmentationNode(self, labelmapNode, segmentationNode, updatedSegmentIDs) -> bool:
        """Label ``k`` goes to segment ``updatedSegmentIDs[k-1]`` (replacing its voxels), on the label map's grid.
        Like Slicer, returns False (does not raise) when the segmentation's source representation is not a binary
        labelmap."""
        segmentation = segmentationNode.GetSegmentation()
        if not segmentation.IsSourceRepresentationBinaryLabelmap():
            return False
        if labelmapNode.GetTransformNodeID() != segmentationNode.GetTransformNodeID():
            raise NotImplementedError("the stand-in does not resample between transforms")
        vtkSlicerSegmentationsModuleLogic.imports += 1
        labels, matrix = labelmapNode.GetImageData().array, vtkMatrix4x4()
        labelmapNode.GetIJKToRASMatrix(matrix)
        ijk_to_ras = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        for index in range(updatedSegmentIDs.GetNumberOfValues()):
            segment = segmentation.GetSegment(updatedSegmentIDs.GetValue(index))
            if segment is not None:
                segment.labelmap = vtkOrientedImageData((labels == index + 1).astype(np.uint8), ijk_to_ras)
        segmentationNode.Modified()
        return True


class vtkMRMLSubjectHierarchyNode(vtkMRMLNode):
    """Items (ids > 0) with parents; data nodes get an item under the scene item when added, as in Slicer."""

    def __init__(self) -> None:
        super().__init__()
        self._items: dict[int, dict] = {}
        self._ids = itertools.count(2)
        self.sceneItem = 1

    @staticmethod
    def GetSubjectHierarchyNode(scene: "vtkMRMLScene") -> "vtkMRMLSubjectHierarchyNode":
        return scene._subjectHierarchy

    def GetSceneItemID(self) -> int:
        return self.sceneItem

    def _add(self, parent: int, name: str, level: str = "", node=None) -> int:
        item = next(self._ids)
        self._items[item] = {"parent": parent, "name": name, "level": level, "node": node}
        return item

    def CreateSubjectItem(self, parent: int, name: str) -> int:
        return self._add(parent, name, "Patient")

    def CreateStudyItem(self, parent: int, name: str) -> int:
        return self._add(parent, name, "Study")

    def GetItemByDataNode(self, node) -> int:
        return next((i for i, d in self._items.items() if d["node"] is node), 0)

    def GetItemParent(self, item: int) -> int:
        return self._items[item]["parent"] if item in self._items else 0

    def SetItemParent(self, item: int, parent: int) -> None:
        self._items[item]["parent"] = parent

    def GetItemLevel(self, item: int) -> str:
        return self._items.get(item, {}).get("level", "")


NODE_CLASSES = {cls.__name__: cls for cls in (
    vtkMRMLScriptedModuleNode, vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode,
    vtkMRMLSegmentationDisplayNode,
)}


class vtkMRMLScene(vtkObject):
    StartCloseEvent, EndCloseEvent, NodeAddedEvent, NodeRemovedEvent = 66053, 66054, 66000, 66001

    def __init__(self) -> None:
        super().__init__()
        self._nodes: dict[str, vtkMRMLNode] = {}
        self._ids = itertools.count(1)
        self._subjectHierarchy = vtkMRMLSubjectHierarchyNode()

    def AddNode(self, node: vtkMRMLNode) -> vtkMRMLNode:
        node._id = f"{type(node).__name__}{next(self._ids)}"
        node._scene = self
        if not node.GetName():
            node._name = self.GenerateUniqueName(type(node).__name__.replace("vtkMRML", "").replace("Node", ""))
        self._nodes[node._id] = node
        if not isinstance(node, (vtkMRMLScriptedModuleNode, vtkMRMLSegmentationDisplayNode)):
            self._subjectHierarchy._add(self._subjectHierarchy.sceneItem, node.GetName(), node=node)
        self.InvokeEvent(self.NodeAddedEvent)
        return node

    def AddNewNodeByClass(self, className: str, name: str = "") -> vtkMRMLNode:
        node = NODE_CLASSES[className]()
        node._name = name
        return self.AddNode(node)

    def RemoveNode(self, node: vtkMRMLNode) -> None:
        self._nodes.pop(node.GetID(), None)
        item = self._subjectHierarchy.GetItemByDataNode(node)
        self._subjectHierarchy._items.pop(item, None)
        self.InvokeEvent(self.NodeRemovedEvent)

    def GetNodeByID(self, node_id: Optional[str]):
        return self._nodes.get(node_id or "")

    def GetNodes(self) -> list[vtkMRMLNode]:
        return list(self._nodes.values())

    def GetNodesByClass(self, className: str) -> list[vtkMRMLNode]:
        return [n for n in self._nodes.values() if n.IsA(className)]

    def GetFirstNodeByClass(self, className: str):
        nodes = self.GetNodesByClass(className)
        return nodes[0] if nodes else None

    def GetFirstNodeByName(self, name: str):
        return next((n for n in self._nodes.values() if n.GetName() == name), None)

    def GetSingletonNode(self, tag: str, className: str):
        return next((n for n in self._nodes.values() if n.SingletonTag == tag and n.IsA(className)), None)

    def GenerateUniqueName(self, base: str) -> str:
        names = {n.GetName() for n in self._nodes.values()}
        if base not in names:
            return base
        return next(f"{base}_{n}" for n in itertools.count(1) if f"{base}_{n}" not in names)

    def Clear(self, removeSingletons: bool = False) -> None:
        self.InvokeEvent(self.StartCloseEvent)
        self._nodes = {k: n for k, n in self._nodes.items() if n.SingletonTag and not removeSingletons}
        self._subjectHierarchy = vtkMRMLSubjectHierarchyNode()
        self.InvokeEvent(self.EndCloseEvent)
