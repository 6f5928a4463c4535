"""3D Slicer module "Segment by text": Medical SAM3 segmentation of a volume from text prompts.

This file is the thin Slicer shell (module description, widget, MRML logic, self-test). Everything that does not
need Slicer lives in ``MedicalSAM3SlicerLib`` and is tested in plain Python. Torch is never imported here: local runs
happen in a ``PythonSlicer -m medsam3_core.volume infer`` child process and remote runs are HTTP calls in a thread,
so Slicer stays responsive and a run can always be cancelled.
"""

import importlib
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Callable, Optional

import numpy as np
import qt
import slicer
import vtk
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from MedicalSAM3SlicerLib import (
    CONFIDENCE_TAG,
    SOURCE_TAG,
    CliJob,
    InstallError,
    JobEvent,
    Parameters,
    ProcessingState,
    RunRequest,
    ThreadJob,
    core_source,
    default_python,
    describe_server,
    infer_command,
    install_commands,
    missing_requirements,
    read_nrrd,
    segments_from_labelmap,
    summary_line,
    write_nrrd,
)
from MedicalSAM3SlicerLib.dependencies import nvidia_cuda_version
from MedicalSAM3SlicerLib.events import CANCELLED, DONE, ERROR, IMPORTING, LOG, PROGRESS

__all__ = ["MedicalSAM3Slicer", "MedicalSAM3SlicerWidget", "MedicalSAM3SlicerLogic", "MedicalSAM3SlicerTest"]

POLL_INTERVAL_MS = 200
API_KEY_SETTING = "MedicalSAM3/ApiKey"
MODEL_SOURCE_LABELS = {"demo": "Demo model (built in)", "checkpoint": "Local checkpoint", "remote": "Remote server"}


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
        for selector in (self.ui.inputVolumeSelector, self.ui.outputSegmentationSelector):
            selector.setMRMLScene(slicer.mrmlScene)
        self.logic = MedicalSAM3SlicerLogic()

        for key, label in MODEL_SOURCE_LABELS.items():
            self.ui.modelSourceComboBox.addItem(_(label), key)
        self.ui.apiKeyLineEdit.setEchoMode(qt.QLineEdit.Password)
        self.ui.apiKeyLineEdit.text = qt.QSettings().value(API_KEY_SETTING, "") or ""

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        for selector in (self.ui.inputVolumeSelector, self.ui.outputSegmentationSelector):
            selector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        for combo in (self.ui.modelSourceComboBox, self.ui.deviceComboBox, self.ui.modeComboBox,
                      self.ui.sliceAxisComboBox):
            combo.currentIndexChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.windowComboBox.currentTextChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.promptsTextEdit.textChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.checkpointPathLineEdit.currentPathChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.serverUrlLineEdit.textChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.thresholdSliderWidget.valueChanged.connect(self.updateParameterNodeFromGUI)
        self.ui.modelThresholdCheckBox.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.cleanupCheckBox.toggled.connect(self.updateParameterNodeFromGUI)
        self.ui.apiKeyLineEdit.editingFinished.connect(self.onApiKeyEdited)
        self.ui.testConnectionButton.clicked.connect(self.onTestConnection)
        self.ui.checkpointFolderButton.clicked.connect(self.onChooseCheckpointFolder)
        self.ui.applyButton.clicked.connect(self.onApplyButton)

        self.initializeParameterNode()
        self.setState(ProcessingState.IDLE)

    def onReload(self) -> None:
        """Developer "Reload": reload the Lib package too, which Python would otherwise keep cached. Submodules go
        first, in name order (each only imports names from modules earlier in that order), then the package."""
        for name in sorted(n for n in sys.modules if n.startswith("MedicalSAM3SlicerLib.")):
            importlib.reload(sys.modules[name])
        importlib.reload(sys.modules["MedicalSAM3SlicerLib"])
        ScriptedLoadableModuleWidget.onReload(self)

    def cleanup(self) -> None:
        self.removeObservers()
        if self.logic is not None:
            self.logic.cancel()

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
            # GetFirstNodeByClass also matches subclasses: a label map volume is a scalar volume, but no input.
            volume = next((n for n in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                           if not n.IsA("vtkMRMLLabelMapVolumeNode")), None)
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
            if self.ui.promptsTextEdit.toPlainText() != params.prompts:
                self.ui.promptsTextEdit.setPlainText(params.prompts)
            self.ui.modelSourceComboBox.setCurrentIndex(self.ui.modelSourceComboBox.findData(params.modelSource))
            # Text fields are written only when they differ: writing the same text back would move the cursor to
            # the end on every keystroke.
            if self.ui.checkpointPathLineEdit.currentPath != params.checkpointPath:
                self.ui.checkpointPathLineEdit.currentPath = params.checkpointPath
            if self.ui.serverUrlLineEdit.text != params.serverUrl:
                self.ui.serverUrlLineEdit.text = params.serverUrl
            self.ui.deviceComboBox.setCurrentIndex(self.ui.deviceComboBox.findText(params.device))
            self.ui.modeComboBox.setCurrentIndex(self.ui.modeComboBox.findText(params.mode))
            self.ui.modelThresholdCheckBox.checked = params.useModelThreshold
            self.ui.thresholdSliderWidget.value = params.threshold
            self.ui.thresholdSliderWidget.setEnabled(not params.useModelThreshold)
            if self.ui.windowComboBox.currentText.strip() != (params.window or "auto"):
                self.ui.windowComboBox.setCurrentText(params.window or "auto")
            self.ui.sliceAxisComboBox.setCurrentIndex(self.ui.sliceAxisComboBox.findText(params.sliceAxis))
            self.ui.cleanupCheckBox.checked = params.cleanup
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
            params.prompts = self.ui.promptsTextEdit.toPlainText()
            params.modelSource = self.ui.modelSourceComboBox.currentData or "demo"
            params.checkpointPath = self.ui.checkpointPathLineEdit.currentPath
            params.serverUrl = self.ui.serverUrlLineEdit.text
            params.device = self.ui.deviceComboBox.currentText
            params.mode = self.ui.modeComboBox.currentText
            params.useModelThreshold = self.ui.modelThresholdCheckBox.checked
            params.threshold = self.ui.thresholdSliderWidget.value
            window = self.ui.windowComboBox.currentText.strip()
            params.window = "" if window == "auto" else window
            params.sliceAxis = self.ui.sliceAxisComboBox.currentText
            params.cleanup = self.ui.cleanupCheckBox.checked
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
        with slicer.util.tryWithErrorDisplay(_("Could not reach the server."), waitCursor=True):
            info = self.logic.testConnection(self.ui.serverUrlLineEdit.text.strip(), self.ui.apiKeyLineEdit.text)
            self.ui.statusLabel.text = describe_server(info)

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
        except (ValueError, RuntimeError) as err:
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
        elif event.kind == DONE:
            output = self.logic.lastOutputSegmentation
            if output is not None and self._parameterNode is not None:
                self._parameterNode.SetNodeReferenceID("OutputSegmentation", output.GetID())
            self.setState(ProcessingState.IDLE, event.message)
        elif event.kind == CANCELLED:
            self.setState(ProcessingState.IDLE, event.message)
        elif event.kind == ERROR:
            self.setState(ProcessingState.FAILED, _("Failed: {message}").format(message=event.message))


class MedicalSAM3SlicerLogic(ScriptedLoadableModuleLogic):
    """Volume node -> core (local child process or remote thread) -> segmentation node. Usable without the GUI:
    ``process(..., waitForCompletion=True)`` blocks and returns the segmentation node."""

    #: Program run for local inference (``python -m <cliModule> infer ...``, the core's JSON-lines protocol).
    cliModule = "medsam3_core.volume"

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._job = None
        self._run: dict = {}
        self.lastOutputSegmentation = None

    # -- dependencies ---------------------------------------------------------------------------------------------
    def ensureDependencies(self, remote: bool, askConfirmation: bool = True) -> None:
        """Install what a local or remote run needs into Slicer's Python, after asking; raise InstallError."""
        missing = missing_requirements(remote)
        if not missing:
            return
        listing = "\n".join(f"  {r.spec} ({r.purpose})" for r in missing)
        if askConfirmation and not slicer.util.confirmOkCancelDisplay(
            _("Medical SAM3 needs these Python packages, which will be downloaded and installed into Slicer "
              "(this can take several minutes):\n\n{listing}").format(listing=listing),
            _("Install dependencies"),
        ):
            raise InstallError(_("Missing Python packages: {names}. Nothing was installed.").format(
                names=", ".join(r.distribution for r in missing)))
        cuda = nvidia_cuda_version() if any(r.module == "torch" for r in missing) else None
        qt.QApplication.setOverrideCursor(qt.Qt.WaitCursor)
        try:
            for requirement, args in install_commands(missing, cuda, core_source(__file__)):
                logging.info("pip install %s", " ".join(args))
                try:
                    slicer.util.pip_install(args)
                except Exception as err:  # pip fails with CalledProcessError, OSError ...; the user needs the reason
                    raise InstallError(_("Installing {what} ({purpose}) failed: {err}. See the Python console; check "
                                         "the network connection.").format(
                        what=requirement.distribution, purpose=requirement.purpose, err=err)) from err
        finally:
            qt.QApplication.restoreOverrideCursor()
        importlib.invalidate_caches()
        still = missing_requirements(remote)
        if still:
            raise InstallError(_("Installed, but {names} cannot be loaded yet; restart Slicer to finish.").format(
                names=", ".join(r.distribution for r in still)), restart_required=True)

    def testConnection(self, url: str, apiKey: str = "") -> dict:
        self.ensureDependencies(remote=True)
        from medsam3_core.errors import MedSam3Error
        from medsam3_core.server.client import RemoteSegmenter

        try:
            return RemoteSegmenter(url, api_key=apiKey or None, timeout=10).check_connection()
        except MedSam3Error as err:
            raise RuntimeError(str(err)) from None

    # -- running ----------------------------------------------------------------------------------------------
    def process(self, inputVolume, outputSegmentation, request: RunRequest, waitForCompletion: bool = True,
                eventCallback: Optional[Callable[[JobEvent], None]] = None):
        """Segment ``inputVolume`` by ``request.prompts`` into ``outputSegmentation`` (None: a new node).

        Raises ``ValueError`` for bad inputs and ``InstallError`` for missing packages before anything starts.
        Blocking mode returns the segmentation node (None if cancelled) and raises ``RuntimeError`` on failure;
        otherwise progress and the outcome arrive through ``eventCallback`` on the GUI thread.
        """
        if self._job is not None:
            raise RuntimeError(_("A segmentation is already running."))
        if inputVolume is None or not inputVolume.IsA("vtkMRMLScalarVolumeNode") or inputVolume.GetImageData() is None:
            raise ValueError(_("Select a scalar input volume with image data."))
        request.validate()
        self.checkOutputSegmentation(outputSegmentation)
        self.ensureDependencies(remote=request.remote)
        array = np.array(slicer.util.arrayFromVolume(inputVolume))
        if array.ndim != 3:
            raise ValueError(_("Only grey-scale volumes can be segmented; convert colour or multi-component volumes "
                               "first (module 'Vector to Scalar Volume')."))
        ijkToRas = self.ijkToRasArray(inputVolume)
        self._run = {"input": inputVolume, "output": outputSegmentation, "request": request, "ijkToRas": ijkToRas,
                     "callback": eventCallback or (lambda event: None), "start": time.monotonic(), "tmp": None}
        try:
            self._job = self._remoteJob(array, ijkToRas, request) if request.remote else self._localJob(
                array, ijkToRas, request)
            self._job.start()
        except Exception:  # nothing started: leave no job and no temporary files behind, then report
            self._job = None
            self._removeTemporaryFiles()
            raise
        if not waitForCompletion:
            qt.QTimer.singleShot(POLL_INTERVAL_MS, self._checkJob)
            return None
        outcome = JobEvent(ERROR, message=_("The segmentation ended without a result."))
        for event in self._job.wait():
            handled = self._handle(event)
            if handled.terminal:
                outcome = handled
        if outcome.kind == ERROR:
            raise RuntimeError(outcome.message)
        return self.lastOutputSegmentation if outcome.kind == DONE else None

    def cancel(self) -> None:
        if self._job is not None:
            self._job.cancel()

    def _localJob(self, array, ijkToRas, request: RunRequest) -> CliJob:
        tmp = tempfile.mkdtemp(prefix="MedicalSAM3-")
        self._run["tmp"] = tmp
        try:
            inputPath = write_nrrd(os.path.join(tmp, "input.nrrd"), array, ijkToRas)
        except OSError as err:
            raise RuntimeError(_("Could not write the volume to {folder}: {err}").format(folder=tmp, err=err)) from err
        command = infer_command(
            default_python(), str(inputPath), request.prompts, os.path.join(tmp, "output"), model=request.model,
            device=request.device, mode=request.mode, threshold=request.threshold, window=request.cli_window(),
            slice_axis=request.slice_axis, cleanup=request.cleanup, modality=self.volumeModality(self._run["input"]),
            module=self.cliModule,
        )
        logging.info("MedicalSAM3: %s", " ".join(command))
        # The launcher sets up Slicer's Python itself; Slicer's own (modified) environment would confuse it.
        return CliJob(command, env=slicer.util.startupEnvironment())

    def _remoteJob(self, array, ijkToRas, request: RunRequest) -> ThreadJob:
        from medsam3_core.errors import MedSam3Error
        from medsam3_core.io.geometry import Volume
        from medsam3_core.prompts import resolve_prompts
        from medsam3_core.segmenter import SegmentOptions
        from medsam3_core.server.client import RemoteSegmenter

        try:
            volume = Volume.from_ijk_to_ras(array, ijkToRas, modality=self.volumeModality(self._run["input"]) or None)
            options = SegmentOptions(**request.options_dict())
            concepts = [r.concept for r in resolve_prompts(request.prompts)]  # synonyms, as the CLI resolves them
            segmenter = RemoteSegmenter(request.server_url, api_key=request.api_key or None)
        except MedSam3Error as err:
            raise ValueError(str(err)) from None
        return ThreadJob(lambda progress, cancel: segmenter.segment(
            volume, request.prompts, options, progress, cancel, concepts=concepts))

    def _checkJob(self) -> None:
        if self._job is None:
            return
        for event in self._job.poll():
            if self._handle(event).terminal:
                return
        qt.QTimer.singleShot(POLL_INTERVAL_MS, self._checkJob)

    def _handle(self, event: JobEvent) -> JobEvent:
        """Forward one event; on success import the result first. Returns the event that was reported."""
        callback = self._run["callback"]
        if event.kind == LOG:
            logging.debug("MedicalSAM3: %s", event.message)
            return event
        if not event.terminal:
            callback(event)
            return event
        self._job = None
        try:
            if event.kind == DONE:
                callback(JobEvent(IMPORTING))
                event = self._importEvent(event)
        except Exception as err:  # an error escaping this timer callback would leave the GUI locked in "Importing"
            logging.exception("MedicalSAM3: importing the result failed")
            event = JobEvent(ERROR, message=str(err) or type(err).__name__)
        finally:
            self._removeTemporaryFiles()
        callback(event)
        return event

    def _removeTemporaryFiles(self) -> None:
        if self._run.get("tmp"):
            shutil.rmtree(self._run["tmp"], ignore_errors=True)
            self._run["tmp"] = None

    def _importEvent(self, event: JobEvent) -> JobEvent:
        run = self._run
        if event.result is not None:  # remote: the result is in memory
            labels, labelsIjkToRas = event.result.labelmap.array, event.result.labelmap.ijk_to_ras()
        else:
            labels, labelsIjkToRas = read_nrrd(os.path.join(event.output, "labels.nrrd"))
        report = event.report or {}
        if labels.shape != slicer.util.arrayFromVolume(run["input"]).shape or not np.allclose(
                labelsIjkToRas, run["ijkToRas"], atol=1e-3):
            raise ValueError(_("The result does not lie on the input volume's voxel grid; it was not imported."))
        segments = segments_from_labelmap(labels, run["request"].prompts, report.get("segments", []))
        model = report.get("model") or run["request"].model
        self.lastOutputSegmentation = self.importSegments(segments, run["input"], run["output"], model)
        message = summary_line(segments, report.get("timings", {}), time.monotonic() - run["start"], model)
        return JobEvent(DONE, message=message, output=event.output, report=report)

    # -- MRML conversion ------------------------------------------------------------------------------------------
    @staticmethod
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

    @staticmethod
    def ijkToRasArray(volumeNode) -> np.ndarray:
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])

    @staticmethod
    def volumeModality(volumeNode) -> str:
        """DICOM modality of a volume loaded from DICOM (a windowing hint for the core), else ''."""
        uids = (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return ""
        return database.fileValue(database.fileForInstance(uids[0]), "0008,0060") or ""

    def importSegments(self, segments, inputVolume, segmentationNode, modelName: str):
        """Write each segment into ``segmentationNode`` (created if None): same-named segments are replaced
        (keeping their id and colour), other segments are kept. Shows the result and centres the views on it."""
        if segmentationNode is None:
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName(f"{inputVolume.GetName()} segments"))
            # A new segmentation moves with its volume. An existing one keeps its transform: Slicer's labelmap
            # import maps the voxels from the volume's frame into the segmentation's, and its other segments stay.
            segmentationNode.SetAndObserveTransformNodeID(inputVolume.GetTransformNodeID())
        if segmentationNode.GetDisplayNode() is None:
            segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputVolume)
        segmentation = segmentationNode.GetSegmentation()
        for data in segments:
            segmentId = segmentation.GetSegmentIdBySegmentName(data.name)
            if not segmentId:
                segmentId = segmentation.AddEmptySegment("", data.name, data.color)
            slicer.util.updateSegmentBinaryLabelmapFromArray(data.mask, segmentationNode, segmentId, inputVolume)
            segment = segmentation.GetSegment(segmentId)
            segment.SetTag(CONFIDENCE_TAG, "" if data.score is None else f"{data.score:.4f}")
            segment.SetTag(SOURCE_TAG, modelName)
        segmentationNode.CreateClosedSurfaceRepresentation()
        self._showResult(inputVolume, segmentationNode, segments)
        return segmentationNode

    @staticmethod
    def _showResult(inputVolume, segmentationNode, segments) -> None:
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


class MedicalSAM3SlicerTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (and through the test stand-in): the core's CT phantom, the demo model, CPU."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_phantom_demo_model()

    def test_phantom_demo_model(self) -> None:
        # A fresh Slicer (and ctest) has no engine yet: install it before the first import of the core.
        MedicalSAM3SlicerLogic().ensureDependencies(remote=False, askConfirmation=False)
        from medsam3_core.phantom import make_abdomen_phantom

        self.delayDisplay("Loading an oblique CT phantom")
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

        self.delayDisplay("Segmenting with the demo model")
        logic = MedicalSAM3SlicerLogic()
        request = RunRequest(prompts=["liver", "kidney"], device="cpu", mode="detect")
        output = logic.process(volume, None, request, waitForCompletion=True)
        segmentation = output.GetSegmentation()
        self.assertEqual(segmentation.GetNumberOfSegments(), 2)
        for name in request.prompts:
            segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(name))
            self.assertIsNotNone(segment, name)
            self.assertTrue(segment.GetTag(CONFIDENCE_TAG, vtk.reference("")), name)

        self.delayDisplay("Re-running replaces same-named segments and keeps the others")
        segmentation.AddEmptySegment("", "manual", (0.1, 0.2, 0.3))
        logic.process(volume, output, RunRequest(prompts=["liver"], device="cpu", mode="detect"))
        names = sorted(segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments()))
        self.assertEqual(names, ["kidney", "liver", "manual"])
        self.delayDisplay("Test passed")
