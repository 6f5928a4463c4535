"""The module's .ui and widget under PyQt5 (offscreen), through the Slicer stand-in.

The .ui is loaded by PyQt5's uic with stand-in CTK/MRML widget classes that declare only the Qt properties the real
widgets have, so a property typo in the .ui fails here; every ``self.ui.<name>`` the module uses must exist.
Run this file as a script to regenerate the README screenshot: ``python Testing/test_slicer_ui.py``.
"""

import os
import re
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "Testing" / "slicer_standin"
MODULE_DIR = ROOT / "MedicalSAM3Slicer"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "MedicalSAM3Slicer.ui"
SCREENSHOT = ROOT / "Resources" / "Screenshots" / "slicer_module.png"
sys.path[:0] = [str(STANDIN), str(MODULE_DIR)]

import slicer  # noqa: E402  (the stand-in)
from qtpy.QtWidgets import QWidget  # noqa: E402

import MedicalSAM3Slicer as module  # noqa: E402
from standin_testing import fresh_scene  # noqa: E402
from MedicalSAM3SlicerLib import Parameters, ProcessingState  # noqa: E402

EXPECTED_CLASSES = {
    "inputVolumeSelector": "qMRMLNodeComboBox", "outputSegmentationSelector": "qMRMLNodeComboBox",
    "promptsTextEdit": "QPlainTextEdit", "modelSourceComboBox": "QComboBox",
    "checkpointPathLineEdit": "ctkPathLineEdit",
    "serverUrlLineEdit": "QLineEdit", "apiKeyLineEdit": "QLineEdit", "testConnectionButton": "QPushButton",
    "deviceComboBox": "QComboBox", "modeComboBox": "QComboBox", "thresholdSliderWidget": "ctkSliderWidget",
    "modelThresholdCheckBox": "QCheckBox", "checkpointFolderButton": "QToolButton", "MedicalSAM3Slicer": "qMRMLWidget",
    "windowComboBox": "QComboBox", "sliceAxisComboBox": "QComboBox", "cleanupCheckBox": "QCheckBox",
    "applyButton": "QPushButton", "progressBar": "QProgressBar", "statusLabel": "QLabel",
}


@pytest.fixture(autouse=True)
def _clean_scene(monkeypatch):
    yield from fresh_scene(monkeypatch, module)


def _names_used_by_module() -> set:
    return set(re.findall(r"self\.ui\.(\w+)", (MODULE_DIR / "MedicalSAM3Slicer.py").read_text()))


def test_ui_loads_and_has_every_widget_the_module_names(qapp):
    root = slicer.util.loadUI(str(UI_FILE))
    found = {w.objectName(): type(w).__name__ for w in [root, *root.findChildren(QWidget)]}
    used = _names_used_by_module()
    assert len(used) >= 20
    assert not used - set(found), f"named in the module but missing in the .ui: {sorted(used - set(found))}"
    for name, cls in EXPECTED_CLASSES.items():
        assert found[name] == cls, name


def test_ui_choices_match_what_the_core_accepts(qapp):
    from medsam3_core.engine.preprocess import CT_WINDOWS
    from medsam3_core.segmenter import MODES, SLICE_AXES

    root = slicer.util.loadUI(str(UI_FILE))  # keep a reference: children die with it
    ui = slicer.util.childWidgetVariables(root)

    def items(combo):
        return [combo.itemText(i) for i in range(combo.count)]

    assert items(ui.windowComboBox) == ["auto", *CT_WINDOWS]  # the core's table is the only one
    assert tuple(items(ui.modeComboBox)) == MODES and tuple(items(ui.sliceAxisComboBox)) == SLICE_AXES
    assert items(ui.deviceComboBox) == ["auto", "cpu", "cuda"]
    assert (ui.thresholdSliderWidget.minimum, ui.thresholdSliderWidget.maximum) == (0.0, 1.0)
    assert ui.outputSegmentationSelector.noneEnabled and ui.advancedCollapsibleButton.collapsed


def test_extension_cmake_lists_every_module_file():
    module_cmake = (MODULE_DIR / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "MedicalSAM3Slicer")
    listed = set(re.findall(r"^\s+(\S+\.(?:py|ui|png))$", module_cmake, re.M))
    shipped = {p.relative_to(MODULE_DIR).as_posix() for p in MODULE_DIR.rglob("*")
               if p.suffix in (".py", ".ui", ".png") and "__pycache__" not in p.parts}
    assert listed == shipped
    assert "slicerMacroBuildScriptedModule" in module_cmake and "slicer_add_python_unittest" in module_cmake
    top = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"^set\({key} ", top, re.M), key
    assert 'set(EXTENSION_CATEGORY "Segmentation")' in top and "add_subdirectory(MedicalSAM3Slicer)" in top
    for url_path in re.findall(r"\$\{MEDICALSAM3_RAW_URL\}/(\S+?)\"", top):
        assert (ROOT / url_path).is_file(), url_path
    assert 'set(EXTENSION_DEPENDS "PyTorch")' in top
    # the engine ships with the extension, next to the module, in the build tree and in the package
    engine_rule = (r'install\(DIRECTORY "\$\{MEDICALSAM3_ENGINE_DIR\}"\s+'
                   r'DESTINATION "\$\{Slicer_INSTALL_QTSCRIPTEDMODULES_LIB_DIR\}"')
    assert re.search(engine_rule, module_cmake)


def test_the_module_file_stays_a_thin_shell():
    """Under 400 lines; everything Slicer-free lives in the Lib, which never imports Slicer, Qt or VTK."""
    assert len((MODULE_DIR / "MedicalSAM3Slicer.py").read_text().splitlines()) < 400
    for path in (MODULE_DIR / "MedicalSAM3SlicerLib").glob("*.py"):
        assert not re.search(r"^\s*(import|from) (slicer|qt|vtk|ctk)\b", path.read_text(), re.M), path.name


def test_extensions_index_entry_matches_the_cmake_metadata():
    import json

    entry = json.loads((MODULE_DIR / "MedicalSAM3.json").read_text())
    top = (ROOT / "CMakeLists.txt").read_text()
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision", "scm_type",
               "scm_url", "tier"}  # the catalog schema forbids other keys
    assert set(entry) <= allowed and {"$schema", "category", "scm_url"} <= set(entry)
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in top
    assert f'set(EXTENSION_DEPENDS "{" ".join(entry["build_dependencies"])}")' in top
    assert entry["tier"] in (1, 3, 5)
    # no made-up address: the maintainer fills in the repository, and both places say so
    assert "REPLACE-WITH-REPOSITORY-URL" in entry["scm_url"] and "REPLACE-WITH-REPOSITORY-URL" in top


def _volume(name="Abdomen CT"):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    voxels = np.full((6, 10, 8), -100, np.int16)
    voxels[2:4, 3:7, 2:6] = 150
    slicer.util.updateVolumeFromArray(node, voxels)
    node.SetSpacing(0.9, 0.9, 2.5)
    return node


def _widget():
    widget = module.MedicalSAM3SlicerWidget()
    widget.setup()
    return widget


def test_the_panel_root_hands_the_scene_to_every_mrml_widget(qapp):
    """The .ui root is a qMRMLWidget whose mrmlSceneChanged signal is connected to each node selector, as in
    Slicer's module template: the widget sets the scene once, on the root."""
    widget = _widget()
    assert widget.ui.inputVolumeSelector.mrmlScene() is slicer.mrmlScene
    assert widget.ui.outputSegmentationSelector.mrmlScene() is slicer.mrmlScene
    assert 'setMRMLScene(slicer.mrmlScene)' not in (MODULE_DIR / "MedicalSAM3Slicer.py").read_text().replace(
        "uiWidget.setMRMLScene(slicer.mrmlScene)", "")
    widget.cleanup()


def test_widget_and_parameter_node_round_trip(qapp):
    volume = _volume()
    widget = _widget()
    node, ui = widget.logic.getParameterNode(), widget.ui
    assert node.GetNodeReference("InputVolume") is volume  # the first volume is picked for the user
    assert not ui.applyButton.enabled and "prompt" in ui.applyButton.toolTip

    ui.promptsTextEdit.setPlainText("liver\nleft kidney")
    ui.modelSourceComboBox.setCurrentIndex(ui.modelSourceComboBox.findData("remote"))
    ui.serverUrlLineEdit.text = "http://gpu:8000"
    assert ui.modelThresholdCheckBox.checked and not ui.thresholdSliderWidget.enabled  # the model's, by default
    ui.modelThresholdCheckBox.checked = False
    assert ui.thresholdSliderWidget.enabled and Parameters(node).useModelThreshold is False
    ui.thresholdSliderWidget.value = 0.3
    ui.cleanupCheckBox.checked = True
    ui.windowComboBox.setCurrentText("lung")
    params = Parameters(node)
    assert (params.prompts, params.modelSource, params.serverUrl, params.threshold, params.cleanup, params.window) == (
        "liver\nleft kidney", "remote", "http://gpu:8000", 0.3, True, "lung")
    assert ui.applyButton.enabled and ui.applyButton.text == "Segment by text"
    assert not ui.serverUrlLineEdit.isHidden() and ui.checkpointPathLineEdit.isHidden()
    assert not ui.deviceComboBox.enabled  # the server chooses its device

    params.modelSource, params.mode, params.sliceAxis = "checkpoint", "detect", "coronal"
    params.checkpointPath = "/models/medsam3.pt"
    assert ui.checkpointPathLineEdit.currentPath == "/models/medsam3.pt" and ui.serverUrlLineEdit.isHidden()
    assert (ui.modeComboBox.currentText, ui.sliceAxisComboBox.currentText) == ("detect", "coronal")
    widget.cleanup()


def test_button_text_tooltip_and_locking_follow_the_state(qapp):
    _volume()
    widget = _widget()
    ui = widget.ui
    ui.promptsTextEdit.setPlainText("liver")
    for state in ProcessingState:
        widget.setState(state)
        assert ui.applyButton.text == state.button_text
        assert ui.applyButton.toolTip == state.tooltip
        assert ui.inputsCollapsibleButton.enabled == (not state.busy)
        assert ui.progressBar.isHidden() == (not state.busy)
    widget.setState(ProcessingState.CANCELLING)
    assert not ui.applyButton.enabled
    widget.cleanup()


def test_click_runs_then_imports_into_a_new_segmentation(qtbot):
    _volume()
    widget = _widget()
    ui = widget.ui
    ui.promptsTextEdit.setPlainText("tissue\nnothing")
    ui.applyButton.click()
    assert ui.applyButton.text == "Cancel"
    qtbot.waitUntil(lambda: widget._state == ProcessingState.IDLE, timeout=120000)
    output = widget.logic.getParameterNode().GetNodeReference("OutputSegmentation")
    assert output is not None and ui.outputSegmentationSelector.currentNode() is output
    assert output.GetSegmentation().GetNumberOfSegments() == 2
    assert "tissue" in ui.statusLabel.text and "nothing: not found" in ui.statusLabel.text
    assert ui.applyButton.text == "Segment by text"
    widget.cleanup()


def _checkpoint(ui, tmp_path, behaviour: str) -> None:
    """Select a "checkpoint" whose file name tells the stand-in server how to behave."""
    (tmp_path / behaviour).touch()
    ui.modelSourceComboBox.setCurrentIndex(ui.modelSourceComboBox.findData("checkpoint"))
    ui.checkpointPathLineEdit.currentPath = str(tmp_path / behaviour)


def test_click_again_cancels_and_the_scene_stays_unchanged(qtbot, tmp_path):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "long")
    slicer.util.updateVolumeFromArray(node, np.ones((40, 6, 6), np.int16))
    widget = _widget()
    ui = widget.ui
    _checkpoint(ui, tmp_path, "slow")
    ui.promptsTextEdit.setPlainText("liver")
    ui.applyButton.click()
    qtbot.waitUntil(lambda: widget._state == ProcessingState.RUNNING and "detect" in ui.progressBar.format,
                    timeout=120000)
    ui.applyButton.click()
    assert ui.applyButton.text == "Cancelling..." and not ui.applyButton.enabled
    qtbot.waitUntil(lambda: widget._state == ProcessingState.IDLE, timeout=120000)
    assert "cancelled" in ui.statusLabel.text.lower()
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode") == []
    widget.cleanup()


def test_failure_shows_the_message_and_allows_a_retry(qtbot, tmp_path):
    _volume()
    widget = _widget()
    _checkpoint(widget.ui, tmp_path, "crash-on-start")
    widget.ui.promptsTextEdit.setPlainText("liver")
    widget.ui.applyButton.click()
    qtbot.waitUntil(lambda: widget._state == ProcessingState.FAILED, timeout=120000)
    assert "DLL load failed" in widget.ui.statusLabel.text
    assert widget.ui.applyButton.enabled and widget.ui.applyButton.text == "Segment by text"
    widget.cleanup()


def test_invalid_input_is_reported_without_starting(qapp):
    _volume()
    widget = _widget()
    widget.ui.promptsTextEdit.setPlainText("liver")
    widget.ui.modelSourceComboBox.setCurrentIndex(widget.ui.modelSourceComboBox.findData("checkpoint"))
    widget.ui.applyButton.click()
    assert widget._state == ProcessingState.FAILED and "checkpoint" in widget.ui.statusLabel.text
    assert slicer.calls[-1][0] == "error"
    widget.cleanup()


def test_test_connection_runs_in_the_background_and_reports_the_server_or_the_error(qtbot):
    from medsam3_core.server.app import create_app
    from medsam3_core.server.runner import BackgroundServer

    key = "ui-test-key-0123456789abcdef"
    widget = _widget()
    ui = widget.ui
    ui.modelSourceComboBox.setCurrentIndex(ui.modelSourceComboBox.findData("remote"))
    with BackgroundServer(create_app(object(), api_key=key, model_info={"model": "demo", "device": "cpu"})) as url:
        ui.serverUrlLineEdit.text = url
        ui.apiKeyLineEdit.text = key
        ui.testConnectionButton.click()
        assert ui.statusLabel.text == "Connecting..." and not ui.testConnectionButton.enabled  # the GUI is free
        qtbot.waitUntil(lambda: ui.testConnectionButton.enabled, timeout=120000)
        status = ui.statusLabel.text
        assert status.startswith("Connected to Medical SAM3 server") and "demo on cpu" in status
        ui.apiKeyLineEdit.text = "not-the-key-0123456789"
        ui.testConnectionButton.click()
        qtbot.waitUntil(lambda: ui.testConnectionButton.enabled, timeout=120000)
    kind, message = slicer.calls[-1]
    assert kind == "error" and message.startswith("Could not reach the server.") and "key" in message.lower()
    widget.cleanup()


def test_developer_reload_also_reloads_the_lib_package(qapp, monkeypatch):
    import importlib

    reloaded = []
    monkeypatch.setattr(importlib, "reload", lambda mod: reloaded.append(mod.__name__) or mod)
    widget = _widget()
    widget.onReload()
    lib = sorted(n for n in sys.modules if n.startswith("MedicalSAM3SlicerLib."))
    scene = sorted(n for n in sys.modules if n.startswith("MedicalSAM3SlicerScene."))
    assert reloaded == lib + ["MedicalSAM3SlicerLib"] + scene + ["MedicalSAM3SlicerScene"]
    assert "MedicalSAM3SlicerLib.local_server" in lib
    assert slicer.calls[-1] == ("reloadScriptedModule", "MedicalSAM3Slicer")
    widget.cleanup()


def render_screenshot(path: Path) -> Path:
    """The panel as a user sees it before a run: volume chosen, prompts typed, demo model, new segmentation."""
    volume = _volume("Abdomen CT")
    widget = _widget()
    ui = widget.ui
    ui.promptsTextEdit.setPlainText("liver\nleft kidney\nspleen\ntumor")
    ui.inputVolumeSelector.setCurrentNode(volume)
    ui.statusLabel.text = "Type one concept per line, then click 'Segment by text'."
    panel = widget.parent
    panel.resize(440, 700)
    panel.show()
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()
    path.parent.mkdir(parents=True, exist_ok=True)
    assert panel.grab().save(str(path))
    widget.cleanup()
    return path


def test_screenshot_renders_text(qapp, tmp_path):
    from PIL import Image

    image = np.asarray(Image.open(render_screenshot(tmp_path / "shot.png")).convert("L"), dtype=float)
    assert image.shape[0] >= 600 and image.shape[1] >= 400
    dark = image < 100  # glyphs of enabled widgets
    assert 0.003 < dark.mean() < 0.5, "blank or black screenshot (missing fonts?)"


if __name__ == "__main__":
    from qtpy.QtWidgets import QApplication

    app = QApplication(sys.argv)
    print(render_screenshot(SCREENSHOT))
