"""3D Slicer module "Segment by text": Medical SAM3 segmentation of a volume from text prompts.

This file is the thin Slicer shell (module description, widget, MRML logic, self-test). Everything that does not
need Slicer lives in ``MedicalSAM3SlicerLib`` and is tested in plain Python. There is one execution path: every run
goes through the core's HTTP client in a thread, to a remote server or to the module's own ``medsam3 serve`` child
on 127.0.0.1 (started on first use, kept warm, stopped with Slicer). Torch never enters Slicer's process.
"""

import importlib
import logging
import sys
import time
from typing import Callable, Optional

import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MedicalSAM3SlicerLib import (
    GUI_BINDINGS, Endpoint, InstallError, JobEvent, Parameters, ProcessingState, RunRequest, ThreadJob, WarmServer,
    connection_work, default_python, describe_server, missing_requirements, segmentation_work, summary_line,
)
from MedicalSAM3SlicerLib.events import CANCELLED, DONE, ERROR, IMPORTING, PROGRESS
from MedicalSAM3SlicerScene import installing, scene

__all__ = ["MedicalSAM3Slicer", "MedicalSAM3SlicerWidget", "MedicalSAM3SlicerLogic", "MedicalSAM3SlicerTest"]

POLL_INTERVAL_MS = 200
API_KEY_SETTING = "MedicalSAM3/ApiKey"
MODEL_SOURCE_LABELS = {"demo": "Demo model (built in)", "checkpoint": "Local checkpoint", "remote": "Remote server"}


def pollJob(job: ThreadJob, onEvent: Callable[[JobEvent], object]) -> None:
    """Hand ``job``'s events to ``onEvent`` on the GUI thread (a QTimer), until and including the terminal one."""
    for event in job.poll():
        onEvent(event)
        if event.terminal:
            return
    qt.QTimer.singleShot(POLL_INTERVAL_MS, lambda: pollJob(job, onEvent))


class MedicalSAM3Slicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Segment by text (Medical SAM3)")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["Medical SAM3 for Slicer developers"]
        self.parent.helpText = _(
            "Type what to segment, one concept per line (e.g. 'liver', 'left kidney', 'tumor'), pick a volume and "
            "click 'Segment by text'. Each line becomes one segment named after it, with its confidence stored as a "
            "segment tag. Runs locally (demo model or your checkpoint) or on a remote Medical SAM3 server."
        )
        self.parent.acknowledgementText = _(
            "Built on SAM 3 (Meta) through Hugging Face transformers. Model weights keep their own licence terms."
        )


class MedicalSAM3SlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Panel: inputs, model, options, output; one button that starts and cancels; progress and status."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updatingGUI = False
        self._state = ProcessingState.IDLE

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MedicalSAM3Slicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)  # the .ui hands the scene on to every MRML widget inside
        self.logic = MedicalSAM3SlicerLogic()
        self._connectionJob = None

        for key, label in MODEL_SOURCE_LABELS.items():
            self.ui.modelSourceComboBox.addItem(_(label), key)
        self.ui.apiKeyLineEdit.setEchoMode(qt.QLineEdit.Password)
        self.ui.apiKeyLineEdit.text = qt.QSettings().value(API_KEY_SETTING, "") or ""

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for selector in (self.ui.inputVolumeSelector, self.ui.outputSegmentationSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.modelSourceComboBox.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        for _name, widget, _property, signal in GUI_BINDINGS:
            getattr(getattr(self.ui, widget), signal).connect(self.updateParameterNodeFromGUI)
        self.ui.apiKeyLineEdit.editingFinished.connect(self.onApiKeyEdited)
        self.ui.testConnectionButton.clicked.connect(self.onTestConnection)
        self.ui.checkpointFolderButton.clicked.connect(self.onChooseCheckpointFolder)
        self.ui.applyButton.clicked.connect(self.onApplyButton)

        self.initializeParameterNode()
        self.setState(ProcessingState.IDLE)

    def onReload(self) -> None:
        """Developer "Reload": stop the server, reload the helper packages too (Python keeps them cached); submodules
        first, in name order (each only imports names from modules earlier in that order), then the package."""
        self.logic.shutdown()
        for package in ("MedicalSAM3SlicerLib", "MedicalSAM3SlicerScene"):
            for name in sorted(n for n in sys.modules if n.startswith(package + ".")):
                importlib.reload(sys.modules[name])
            importlib.reload(sys.modules[package])
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        """Slicer exits or the module is reloaded: stop the run and the local server with its processes."""
        self.removeObservers()
        if self.logic is not None:
            self.logic.cancel()
            self.logic.shutdown()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # -- parameter node <-> GUI -----------------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        node = self.logic.getParameterNode()
        Parameters(node).set_defaults()
        if not node.GetNodeReference("InputVolume"):
            volume = scene.firstInputVolume()
            if volume:
                node.SetNodeReferenceID("InputVolume", volume.GetID())
        self.setParameterNode(node)

    def setParameterNode(self, node) -> None:
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        if self._parameterNode is None or self._updatingGUI:
            return
        self._updatingGUI = True
        try:
            node, params = self._parameterNode, Parameters(self._parameterNode)
            self.ui.inputVolumeSelector.setCurrentNode(node.GetNodeReference("InputVolume"))
            self.ui.outputSegmentationSelector.setCurrentNode(node.GetNodeReference("OutputSegmentation"))
            self.ui.modelSourceComboBox.setCurrentIndex(self.ui.modelSourceComboBox.findData(params.modelSource))
            for name, widget, qtProperty, _signal in GUI_BINDINGS:
                value = getattr(params, name)
                if getattr(getattr(self.ui, widget), qtProperty) != value:  # same text: leave the cursor alone
                    setattr(getattr(self.ui, widget), qtProperty, value)
            self.ui.thresholdSliderWidget.setEnabled(not params.useModelThreshold)
            self._updateSourceRows(params.modelSource)
            self._updateButton()
        finally:
            self._updatingGUI = False

    def updateParameterNodeFromGUI(self, *args) -> None:
        if self._parameterNode is None or self._updatingGUI:
            return
        node = self._parameterNode
        wasModified = node.StartModify()
        try:
            node.SetNodeReferenceID("InputVolume", self.ui.inputVolumeSelector.currentNodeID)
            node.SetNodeReferenceID("OutputSegmentation", self.ui.outputSegmentationSelector.currentNodeID)
            params = Parameters(node)
            params.modelSource = self.ui.modelSourceComboBox.currentData or "demo"
            for name, widget, qtProperty, _signal in GUI_BINDINGS:
                setattr(params, name, getattr(getattr(self.ui, widget), qtProperty))
        finally:
            node.EndModify(wasModified)

    def _updateSourceRows(self, source: str) -> None:
        for widget in (self.ui.checkpointLabel, self.ui.checkpointPathLineEdit, self.ui.checkpointFolderButton):
            widget.setVisible(source == "checkpoint")
        for widget in (self.ui.serverUrlLabel, self.ui.serverUrlLineEdit, self.ui.apiKeyLabel,
                       self.ui.apiKeyLineEdit, self.ui.testConnectionButton):
            widget.setVisible(source == "remote")
        self.ui.deviceComboBox.setEnabled(source != "remote")

    # -- state, progress and actions ------------------------------------------------------------------------------
    def setState(self, state: ProcessingState, status: Optional[str] = None) -> None:
        self._state = state
        for widget in (self.ui.inputsCollapsibleButton, self.ui.modelCollapsibleButton,
                       self.ui.advancedCollapsibleButton, self.ui.outputsCollapsibleButton):
            widget.setEnabled(not state.busy)
        self.ui.progressBar.setVisible(state.busy)
        if state == ProcessingState.STARTING:
            self.ui.progressBar.setRange(0, 0)  # busy indicator until the first progress event
        if status is not None:
            self.ui.statusLabel.text = status
        self._updateButton()

    def _updateButton(self) -> None:
        button, state = self.ui.applyButton, self._state
        button.text = _(state.button_text)
        if state.busy:
            button.enabled, button.toolTip = state.button_enabled, _(state.tooltip)
            return
        node = self._parameterNode
        ready = bool(node and node.GetNodeReference("InputVolume") and Parameters(node).prompt_list())
        button.enabled = ready
        button.toolTip = _(state.tooltip) if ready else _("Select an input volume and type at least one prompt.")

    def onChooseCheckpointFolder(self) -> None:
        """ctkPathLineEdit browses either files or folders; a model may be either, so folders get this button."""
        folder = qt.QFileDialog.getExistingDirectory(self.parent, _("Model folder"),
                                                     self.ui.checkpointPathLineEdit.currentPath)
        if folder:
            self.ui.checkpointPathLineEdit.currentPath = folder

    def onApiKeyEdited(self) -> None:
        qt.QSettings().setValue(API_KEY_SETTING, self.ui.apiKeyLineEdit.text)

    def onTestConnection(self) -> None:
        """Ask the server for its info in a thread: a slow or unreachable server must not freeze Slicer."""
        if self._connectionJob is not None:
            return
        try:
            self.logic.ensureDependencies(remote=True)
        except InstallError as err:
            self.ui.statusLabel.text = str(err)
            return
        self._connectionJob = ThreadJob(connection_work(self.ui.serverUrlLineEdit.text.strip(),
                                                        self.ui.apiKeyLineEdit.text))
        self._connectionJob.start()
        self.ui.testConnectionButton.enabled = False
        self.ui.statusLabel.text = _("Connecting...")
        pollJob(self._connectionJob, self._onConnectionEvent)

    def _onConnectionEvent(self, outcome: JobEvent) -> None:
        if not outcome.terminal:
            return
        self._connectionJob = None
        self.ui.testConnectionButton.enabled = True
        if outcome.kind == DONE:
            self.ui.statusLabel.text = describe_server(outcome.result)
        else:
            self.ui.statusLabel.text = _("Could not reach the server: {message}").format(message=outcome.message)
            slicer.util.errorDisplay(_("Could not reach the server.") + "\n" + outcome.message)

    def onApplyButton(self) -> None:
        if self._state.busy:
            self.setState(ProcessingState.CANCELLING, _("Cancelling..."))
            self.logic.cancel()
            return
        node = self._parameterNode
        request = RunRequest.from_parameters(Parameters(node), api_key=self.ui.apiKeyLineEdit.text)
        self.setState(ProcessingState.STARTING, _("Starting..."))
        try:
            self.logic.process(node.GetNodeReference("InputVolume"), node.GetNodeReference("OutputSegmentation"),
                               request, waitForCompletion=False, eventCallback=self.onJobEvent)
        except InstallError as err:
            self.setState(ProcessingState.FAILED, str(err))
            if err.restart_required and slicer.util.confirmOkCancelDisplay(_("Restart Slicer now?")):
                slicer.util.restart()
        except Exception as err:  # bad input (ValueError, the core's errors) or a run already going
            self.setState(ProcessingState.FAILED, str(err))
            slicer.util.errorDisplay(str(err))

    def onJobEvent(self, event: JobEvent) -> None:
        """Called on the GUI thread by the logic for every progress/terminal event of the running job."""
        if event.kind == PROGRESS:
            if self._state == ProcessingState.CANCELLING:  # keep saying "Cancelling..." until the job ends
                return
            if self._state == ProcessingState.STARTING:
                self.setState(ProcessingState.RUNNING)
            self.ui.progressBar.setRange(0, 100)
            self.ui.progressBar.value = int(round(event.fraction * 100))
            self.ui.progressBar.setFormat(f"{event.stage}: %p%")
            self.ui.statusLabel.text = _("Running: {stage}").format(stage=event.stage)
        elif event.kind == IMPORTING:
            self.setState(ProcessingState.IMPORTING, _("Importing the result..."))
        elif event.kind in (DONE, CANCELLED):
            output = self.logic.lastOutputSegmentation
            if event.kind == DONE and output is not None and self._parameterNode is not None:
                self._parameterNode.SetNodeReferenceID("OutputSegmentation", output.GetID())
            self.setState(ProcessingState.IDLE, event.message)
        elif event.kind == ERROR:
            self.setState(ProcessingState.FAILED, _("Failed: {message}").format(message=event.message))


class MedicalSAM3SlicerLogic(ScriptedLoadableModuleLogic):
    """Volume node -> core (through a server: the warm local child or a remote one) -> segmentation node. Usable
    without the GUI: ``process(..., waitForCompletion=True)`` blocks and returns the segmentation node."""

    #: Program the local server child runs with ``-m`` (tests substitute a stand-in speaking the same API).
    serverModule = "medsam3_core.server"
    #: Interpreter command for the child; None: ``PythonSlicer`` (tests use a launcher-like wrapper).
    serverPython: Optional[list] = None

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._job = None
        self._run: dict = {}
        self.lastOutputSegmentation = None
        self.servers = WarmServer(python=lambda: self.serverPython or default_python(),
                                  env=lambda: installing.serverEnvironment(__file__), module=self.serverModule)
        slicer.app.connect("aboutToQuit()", self.shutdown)

    def shutdown(self) -> None:
        """Stop the local server and every process under it (Slicer exits, the module reloads)."""
        self.servers.stop()

    def ensureDependencies(self, remote: bool, askConfirmation: bool = True) -> None:
        """Make the bundled engine importable and install what a run needs (after asking); raise InstallError."""
        installing.ensureDependencies(__file__, remote, askConfirmation, lambda remote: missing_requirements(remote))

    # -- running ----------------------------------------------------------------------------------------------
    def process(self, inputVolume, outputSegmentation, request: RunRequest, waitForCompletion: bool = True,
                eventCallback: Optional[Callable[[JobEvent], None]] = None):
        """Segment ``inputVolume`` by ``request.prompts`` into ``outputSegmentation`` (None: a new node). Raises
        ``ValueError`` for bad inputs and ``InstallError`` for missing packages before anything starts. Blocking mode
        returns the segmentation node (None if cancelled) and raises ``RuntimeError`` on failure; otherwise progress
        and the outcome arrive through ``eventCallback`` on the GUI thread."""
        if self._job is not None:
            raise RuntimeError(_("A segmentation is already running."))
        if inputVolume is None or not inputVolume.IsA("vtkMRMLScalarVolumeNode") or inputVolume.GetImageData() is None:
            raise ValueError(_("Select a scalar input volume with image data."))
        request.validate()
        scene.checkOutputSegmentation(outputSegmentation)
        self.ensureDependencies(remote=request.remote)
        from medsam3_core.segmenter import SegmentOptions

        volume, ijkToRas = scene.coreVolume(inputVolume)
        options = SegmentOptions(**request.options_dict())
        if request.remote:
            self.servers.stop()  # the local model's memory is not needed while a remote server works
            source = lambda progress, cancel: Endpoint(request.server_url, request.api_key or None)  # noqa: E731
        else:
            source = lambda progress, cancel: self.servers.endpoint(request.server_config(), progress, cancel)  # noqa
        self._run = {"input": inputVolume, "output": outputSegmentation, "request": request, "ijkToRas": ijkToRas,
                     "callback": eventCallback or (lambda event: None), "start": time.monotonic()}
        self._job = ThreadJob(segmentation_work(source, volume, request.prompts, options,
                                                None if request.remote else self.servers.check_alive))
        self._job.start()
        if not waitForCompletion:
            pollJob(self._job, self._handle)
            return None
        outcome = JobEvent(ERROR, message=_("The segmentation ended without a result."))
        for event in self._job.wait():
            handled = self._handle(event)
            outcome = handled if handled.terminal else outcome
        if outcome.kind == ERROR:
            raise RuntimeError(outcome.message)
        return self.lastOutputSegmentation if outcome.kind == DONE else None

    def cancel(self) -> None:
        """Cancel through the server's API (the client deletes the job, which stops within one batch)."""
        if self._job is not None:
            self._job.cancel()

    def _handle(self, event: JobEvent) -> JobEvent:
        """Forward one event; on success import the result first. Returns the event that was reported."""
        callback = self._run["callback"]
        if event.terminal:
            self._job = None
            if event.kind == DONE:
                callback(JobEvent(IMPORTING))
                run, report = self._run, event.report or {}
                model = report.get("model") or run["request"].model
                try:
                    self.lastOutputSegmentation, segments = scene.importResult(
                        event.result, report, run["input"], run["ijkToRas"], run["output"], run["request"].prompts,
                        model)
                    event = JobEvent(DONE, message=summary_line(segments, report.get("timings", {}),
                                                                time.monotonic() - run["start"], model), report=report)
                except Exception as err:  # escaping this timer callback would leave the GUI locked in "Importing"
                    logging.exception("MedicalSAM3: importing the result failed")
                    event = JobEvent(ERROR, message=str(err) or type(err).__name__)
        callback(event)
        return event


class MedicalSAM3SlicerTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer ("Reload and Test", ctest) and through the test stand-in; see MedicalSAM3SlicerScene."""

    def runTest(self) -> None:
        from MedicalSAM3SlicerScene.selftest import run_phantom_demo_model

        slicer.mrmlScene.Clear()
        run_phantom_demo_model(self, MedicalSAM3SlicerLogic())
