"""Defects real Slicer would hit and the earlier stand-in hid; each test failed before its fix.

The stand-in (Testing/slicer_standin) is as strict as Slicer where these hid: ``tryWithErrorDisplay`` re-raises,
a segment import into a segmentation whose source representation is not a binary labelmap raises
``RuntimeError``, and the scene's ``GetFirstNodeByClass`` matches subclasses (a label map *is* a scalar volume).
"""

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "Testing" / "slicer_standin"
sys.path[:0] = [str(STANDIN), str(ROOT / "MedicalSAM3Slicer")]

import slicer  # noqa: E402  (the stand-in)
from slicer.mrml import CLOSED_SURFACE  # noqa: E402

import MedicalSAM3Slicer as module  # noqa: E402
from standin_testing import fresh_scene  # noqa: E402
from MedicalSAM3SlicerLib import ProcessingState  # noqa: E402


@pytest.fixture(autouse=True)
def _clean_scene(monkeypatch):
    yield from fresh_scene(monkeypatch, module)


def _volume(name="CT"):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    voxels = np.full((6, 10, 8), -100, np.int16)
    voxels[2:4, 3:7, 2:6] = 150
    slicer.util.updateVolumeFromArray(node, voxels)
    return node


def _widget():
    widget = module.MedicalSAM3SlicerWidget()
    widget.setup()
    return widget


def test_standin_refuses_labelmap_writes_into_a_surface_segmentation():
    volume = _volume()
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    segmentation.GetSegmentation().SetSourceRepresentationName(CLOSED_SURFACE)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "liver")
    with pytest.raises(RuntimeError, match="Importing of segment failed"):
        slicer.util.updateSegmentBinaryLabelmapFromArray(np.zeros((6, 10, 8), np.uint8), segmentation, segment_id,
                                                         volume)
    with pytest.raises(ZeroDivisionError), slicer.util.tryWithErrorDisplay("shown"):
        1 / 0
    assert slicer.calls[-1][0] == "error"


def test_1_surface_output_segmentation_fails_cleanly_instead_of_locking_the_gui(qtbot):
    _volume()
    output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "RTSTRUCT")
    output.GetSegmentation().SetSourceRepresentationName(CLOSED_SURFACE)
    widget = _widget()
    widget.ui.outputSegmentationSelector.setCurrentNode(output)
    widget.ui.promptsTextEdit.setPlainText("liver")
    widget.ui.applyButton.click()
    qtbot.waitUntil(lambda: not widget._state.busy, timeout=120000)
    assert widget._state == ProcessingState.FAILED
    assert "closed surface" in widget.ui.statusLabel.text.lower()
    assert widget.ui.applyButton.enabled and widget.ui.inputsCollapsibleButton.enabled
    assert output.GetSegmentation().GetNumberOfSegments() == 0
    widget.cleanup()


def test_1_any_import_failure_becomes_an_error_event(qtbot, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("Importing of segment failed.")

    monkeypatch.setattr(module.scene, "importSegments", broken)
    _volume()
    widget = _widget()
    widget.ui.promptsTextEdit.setPlainText("liver")
    widget.ui.applyButton.click()
    qtbot.waitUntil(lambda: not widget._state.busy, timeout=120000)
    assert widget._state == ProcessingState.FAILED and "Importing of segment failed" in widget.ui.statusLabel.text
    widget.cleanup()


def test_6_gui_refresh_keeps_the_cursor_where_the_user_types(qapp):
    _volume()
    widget = _widget()
    ui = widget.ui
    ui.modelSourceComboBox.setCurrentIndex(ui.modelSourceComboBox.findData("remote"))
    for edit in (ui.serverUrlLineEdit, ui.checkpointPathLineEdit):
        edit.setText("http://gpu-host:8000")
        edit.setCursorPosition(4)
        edit.insert("s")  # typing: textChanged -> parameter node -> GUI refresh
        assert edit.cursorPosition == 5, edit.objectName
    ui.windowComboBox.setCurrentText("40,400")
    ui.windowComboBox.lineEdit().setCursorPosition(2)
    ui.windowComboBox.lineEdit().insert("0")
    assert ui.windowComboBox.lineEdit().cursorPosition() == 3 and ui.windowComboBox.currentText == "400,400"
    widget.cleanup()


def test_7_a_label_map_is_never_preselected_as_the_input(qapp):
    labels = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(labels, np.zeros((2, 2, 2), np.uint8))
    volume = _volume()
    widget = _widget()
    assert widget.logic.getParameterNode().GetNodeReference("InputVolume") is volume
    widget.cleanup()


def test_7_the_checkpoint_can_be_a_folder(qapp, monkeypatch, tmp_path):
    import qt

    widget = _widget()
    monkeypatch.setattr(qt.QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(tmp_path)))
    widget.ui.checkpointFolderButton.click()
    assert widget.ui.checkpointPathLineEdit.currentPath == str(tmp_path)
    widget.cleanup()


def test_7_a_failed_install_names_the_package_not_a_pip_flag(qapp, monkeypatch):
    from MedicalSAM3SlicerLib import InstallError
    from MedicalSAM3SlicerLib.dependencies import REQUIREMENTS

    torch = next(r for r in REQUIREMENTS if r.module == "torch")
    monkeypatch.setattr(module, "missing_requirements", lambda remote: [torch])

    def failing(args):
        raise OSError("network unreachable")

    monkeypatch.setattr(slicer.util, "pip_install", failing)
    with pytest.raises(InstallError) as err:
        module.MedicalSAM3SlicerLogic().ensureDependencies(remote=False, askConfirmation=False)
    assert str(err.value).startswith("Installing torch (runs the model on this computer) failed: network unreachable")


class _NotInstalledYet:
    """A meta-path finder that makes ``medsam3_core.phantom`` unimportable until pip has been asked to install."""

    def __init__(self) -> None:
        self.installed = False

    def find_spec(self, name, path=None, target=None):
        if name == "medsam3_core.phantom" and not self.installed:
            raise ImportError("No module named 'medsam3_core.phantom' (not installed yet)")
        return None


def test_5_self_test_installs_dependencies_before_importing_the_core(qapp, monkeypatch):
    from MedicalSAM3SlicerLib.dependencies import REQUIREMENTS

    finder = _NotInstalledYet()
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    monkeypatch.delitem(sys.modules, "medsam3_core.phantom", raising=False)
    scipy = next(r for r in REQUIREMENTS if r.module == "scipy")
    monkeypatch.setattr(module, "missing_requirements", lambda remote: [] if finder.installed else [scipy])

    def pip_install(args):
        slicer.calls.append(("pip_install", args))
        finder.installed = True

    monkeypatch.setattr(slicer.util, "pip_install", pip_install)
    module.MedicalSAM3SlicerTest().runTest()
    assert [c[0] for c in slicer.calls].count("pip_install") == 1
    (output,) = slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode")
    assert output.GetSegmentation().GetNumberOfSegments() == 3
