"""The module's scene side: what it reads from and writes into MRML (Slicer-dependent, tested through the stand-in).

Kept out of the module file so that stays a thin shell; everything Slicer-free lives in ``MedicalSAM3SlicerLib``.
"""

import logging

import numpy as np
import slicer
import vtk
from slicer.i18n import tr as _

from MedicalSAM3SlicerLib import CONFIDENCE_TAG, SOURCE_TAG, TERMINOLOGY_TAG, segments_from_labelmap

__all__ = ["checkOutputSegmentation", "ijkToRasArray", "volumeModality", "importSegments", "showResult",
           "firstInputVolume", "coreVolume", "importResult"]


def coreVolume(volumeNode):
    """``(medsam3_core Volume, IJK->RAS matrix)`` of a scalar volume node; a copy of the voxels, because the upload
    reads them in a thread while the user may edit the volume. ``ValueError`` for colour volumes."""
    from medsam3_core.io.geometry import Volume

    array = slicer.util.arrayFromVolume(volumeNode)
    if array.ndim != 3:
        raise ValueError(_("Only grey-scale volumes can be segmented; convert colour or multi-component volumes "
                           "first (module 'Vector to Scalar Volume')."))
    ijkToRas = ijkToRasArray(volumeNode)
    return Volume.from_ijk_to_ras(np.array(array), ijkToRas, modality=volumeModality(volumeNode) or None), ijkToRas


def firstInputVolume():
    """The volume to preselect: the first scalar volume that is not a label map (``getNodesByClass`` matches
    subclasses, and a label map volume is a scalar volume)."""
    return next((n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                 if not n.IsA("vtkMRMLLabelMapVolumeNode")), None)


def checkOutputSegmentation(segmentationNode) -> None:
    """Slicer only writes label maps into a segmentation whose source representation is a binary labelmap;
    one loaded from RTSTRUCT or models holds closed surfaces and would refuse the result after the run."""
    if segmentationNode is None:
        return
    segmentation = segmentationNode.GetSegmentation()
    if not segmentation.IsSourceRepresentationBinaryLabelmap():
        raise ValueError(_("The output segmentation '{name}' stores its segments as {kind}; choose another "
                           "output segmentation or 'Create new segmentation'.").format(
            name=segmentationNode.GetName(), kind=segmentation.GetSourceRepresentationName().lower()))

def ijkToRasArray(volumeNode) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

def volumeModality(volumeNode) -> str:
    """DICOM modality of a volume loaded from DICOM (a windowing hint for the core), else ''."""
    uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return ""
    return database.fileValue(database.fileForInstance(uids[0]), "0008,0060") or ""

def importResult(result, report: dict, inputVolume, ijkToRas, segmentationNode, prompts, modelName: str):
    """Check that a finished run's label map lies on the input's voxel grid, import it (:func:`importSegments`) and
    log the run's warnings; returns the segmentation node and the per-prompt segments."""
    labels = result.labelmap.array
    if labels.shape != slicer.util.arrayFromVolume(inputVolume).shape or not np.allclose(
            result.labelmap.ijk_to_ras(), ijkToRas, atol=1e-3):
        raise ValueError(_("The result does not lie on the input volume's voxel grid; it was not imported."))
    segments = segments_from_labelmap(labels, prompts, report.get("segments", []))
    node = importSegments(labels, segments, inputVolume, segmentationNode, modelName)
    for warning in report.get("warnings", []):
        logging.warning("MedicalSAM3: %s", warning)
    return node, segments


def importSegments(labels, segments, inputVolume, segmentationNode, modelName: str):
    """Import the label map once into ``segmentationNode`` (created under the input's study if None): label k
    fills the segment named after prompt k, replacing a same-named segment (keeping its id and colour); other
    segments stay. Each segment gets the standard terminology, confidence and model tags."""
    if segmentationNode is None:
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
            "vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName(f"{inputVolume.GetName()} segments"))
        segmentationNode.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
        shNode = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        study = shNode.GetItemParent(shNode.GetItemByDataNode(inputVolume))
        if study and study != shNode.GetSceneItemID():
            shNode.SetItemParent(shNode.GetItemByDataNode(segmentationNode), study)
    checkOutputSegmentation(segmentationNode)
    if segmentationNode.GetDisplayNode() is None:
        segmentationNode.CreateDefaultDisplayNodes()
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
    segmentation, segmentIds = segmentationNode.GetSegmentation(), vtk.vtkStringArray()
    for data in segments:
        segmentId = segmentation.GetSegmentIdBySegmentName(data.name) or segmentation.AddEmptySegment(
            "", data.name, data.color)
        segmentIds.InsertNextValue(segmentId)
        segment = segmentation.GetSegment(segmentId)
        segment.SetTag(TERMINOLOGY_TAG, data.terminology)
        segment.SetTag(CONFIDENCE_TAG, "" if data.score is None else f"{data.score:.4f}")
        segment.SetTag(SOURCE_TAG, modelName)
    labelmapNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        slicer.util.updateVolumeFromArray(labelmapNode, labels)
        matrix = vtk.vtkMatrix4x4()
        inputVolume.GetIJKToRASMatrix(matrix)
        labelmapNode.SetIJKToRASMatrix(matrix)
        labelmapNode.SetAndObserveTransformNodeID(segmentationNode.GetTransformNodeID())
        if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(
                labelmapNode, segmentationNode, segmentIds):
            raise RuntimeError(_("Slicer could not import the result into '{name}'.").format(
                name=segmentationNode.GetName()))
    finally:
        slicer.mrmlScene.RemoveNode(labelmapNode)
    segmentationNode.CreateClosedSurfaceRepresentation()
    showResult(inputVolume, segmentationNode, segments)
    return segmentationNode

def showResult(inputVolume, segmentationNode, segments) -> None:
    layoutManager = slicer.app.layoutManager()
    if layoutManager is None:  # no GUI (tests, batch mode)
        return
    slicer.util.setSliceViewerLayers(background=inputVolume, fit=True)
    found = [s for s in segments if s.voxels > 0]
    if found:
        biggest = max(found, key=lambda s: s.voxels)
        segmentId = segmentationNode.GetSegmentation().GetSegmentIdBySegmentName(biggest.name)
        center = segmentationNode.GetSegmentCenterRAS(segmentId)
        slicer.modules.markups.logic().JumpSlicesToLocation(center[0], center[1], center[2], True)
    if layoutManager.threeDViewCount > 0:
        layoutManager.threeDWidget(0).threeDView().resetFocalPoint()
