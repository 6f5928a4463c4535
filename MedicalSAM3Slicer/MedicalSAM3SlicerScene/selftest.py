"""The in-Slicer self-test ("Reload and Test", ctest): the core's oblique CT phantom, the demo model on the CPU,
two runs through the warm local server, replace-by-name. Also run by the test suite through the Slicer stand-in."""

import numpy as np
import slicer
import vtk

from MedicalSAM3SlicerLib import RunRequest

__all__ = ["run_phantom_demo_model"]


def run_phantom_demo_model(test, logic) -> None:
    """``test``: a ``ScriptedLoadableModuleTest`` (assertions, ``delayDisplay``); ``logic``: the module's logic."""
    # A fresh Slicer (and ctest) has no engine yet: install it before the first import of the core.
    logic.ensureDependencies(remote=False, askConfirmation=False)
    from medsam3_core.phantom import make_abdomen_phantom

    test.delayDisplay("Loading an oblique CT phantom")
    oblique = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ct, _labels, _names = make_abdomen_phantom(seed=1, shape=(12, 48, 40), spacing=(1.6, 1.2, 4.0),
                                               direction=oblique)
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Phantom")
    slicer.util.updateVolumeFromArray(volume, ct.array)
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, ct.ijk_to_ras()[row, col])
    volume.SetIJKToRASMatrix(matrix)
    try:
        test.delayDisplay("Segmenting with the demo model")
        output = logic.process(volume, None, RunRequest(prompts=["liver", "kidney"], device="cpu", mode="detect"))
        segmentation = output.GetSegmentation()
        test.assertEqual(segmentation.GetNumberOfSegments(), 2)
        test.delayDisplay("Re-running (warm server) replaces same-named segments and keeps the others")
        segmentation.AddEmptySegment("", "manual", (0.1, 0.2, 0.3))
        logic.process(volume, output, RunRequest(prompts=["liver"], device="cpu", mode="detect"))
        names = sorted(segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments()))
        test.assertEqual(names, ["kidney", "liver", "manual"])
    finally:
        logic.shutdown()
    test.delayDisplay("Test passed")
