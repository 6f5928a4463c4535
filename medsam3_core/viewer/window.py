"""The viewer's main window: three slice views, window/level, prompts, Segment/Cancel, legend and export.

State machine (one place sets what the user can press): ``idle`` → Segment starts a
:class:`~medsam3_core.viewer.worker.SegmentationThread` → ``running`` (the button reads Cancel) → Cancel →
``cancelling`` (button disabled until the worker stops within one batch) → ``idle``. Errors never open modal
dialogs from worker callbacks; they go to the status line and a non-blocking message box, and the last one is kept
in :attr:`ViewerWindow.last_error` so scripts and tests can read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import (
    QAction,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from medsam3_core.errors import MedSam3Error, PromptError
from medsam3_core.io.geometry import Volume
from medsam3_core.windows import CT_WINDOWS, IntensityNormalizer, Window
from medsam3_core.prompts import PromptResolution, duplicate_concepts, resolve_prompts
from medsam3_core.segmenter import MODES, SegmentationResult, Segmenter, SegmentOptions
from medsam3_core.viewer.legend import SegmentLegend
from medsam3_core.viewer.slice_view import SliceView
from medsam3_core.viewer.worker import SegmentationThread, SegmenterFactory

__all__ = ["ViewerWindow", "IDLE", "RUNNING", "CANCELLING"]

IDLE, RUNNING, CANCELLING = "idle", "running", "cancelling"
_AUTO, _CUSTOM = "auto", "custom"
_STAGE_TEXT = {"load": "Loading model", "encode": "Encoding slices", "detect": "Detecting", "track": "Tracking",
               "fuse": "Fusing", "write": "Writing", "upload": "Uploading", "queue": "Waiting for server",
               "download": "Downloading"}


class _PromptEdit(QPlainTextEdit):
    """Prompt box where Ctrl+Enter means "segment" (a plain Enter starts the next prompt line)."""

    submitted = Signal()

    def keyPressEvent(self, event) -> None:  # noqa: N802 (Qt override)
        if event.key() in (Qt.Key_Return, Qt.Key_Enter) and event.modifiers() & Qt.ControlModifier:
            self.submitted.emit()
            return
        super().keyPressEvent(event)


class ViewerWindow(QMainWindow):
    """Standalone viewer; ``segmenter_factory`` is called once (on the worker thread) to get the segmenter."""

    def __init__(
        self,
        segmenter_factory: SegmenterFactory,
        volume: Optional[Volume] = None,
        *,
        prompts: Sequence[str] = (),
        synonyms_file: Union[None, str, Path] = None,
        options: Optional[SegmentOptions] = None,
    ) -> None:
        super().__init__()
        self.setWindowTitle("Medical SAM3 viewer")
        self._factory = segmenter_factory
        self._segmenter: Optional[Segmenter] = None
        self._synonyms_file = synonyms_file
        self._defaults = options or SegmentOptions()
        self.volume: Optional[Volume] = None
        self.result: Optional[SegmentationResult] = None
        self.last_error: Optional[str] = None
        self.state = IDLE
        self._thread: Optional[SegmentationThread] = None
        self._resolutions: list[PromptResolution] = []
        self._normalizer: Optional[IntensityNormalizer] = None
        self._build_ui()
        self.prompt_edit.setPlainText("\n".join(prompts))
        if volume is not None:
            self.load_volume(volume)
        self._update_state()

    # -- layout ----------------------------------------------------------------------------------------------------
    def _build_ui(self) -> None:
        self.views = {name: SliceView(name) for name in ("axial", "coronal", "sagittal")}
        grid = QGridLayout()
        grid.addWidget(self.views["axial"], 0, 0, 2, 1)
        grid.addWidget(self.views["coronal"], 0, 1)
        grid.addWidget(self.views["sagittal"], 1, 1)
        grid.setColumnStretch(0, 3)
        grid.setColumnStretch(1, 2)
        views = QWidget()
        views.setLayout(grid)
        for view in self.views.values():
            view.window_dragged.connect(self._drag_window)

        self.prompt_edit = _PromptEdit()
        self.prompt_edit.submitted.connect(self._on_segment_button)
        self.prompt_edit.setObjectName("promptEdit")
        self.prompt_edit.setPlaceholderText("One concept per line, e.g.\nliver\nkidney\n(Ctrl+Enter segments)")
        self.prompt_edit.setMaximumHeight(96)
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(MODES)
        self.mode_combo.setCurrentText(self._defaults.mode)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 1.0)
        self.threshold_spin.setSingleStep(0.05)
        # The bottom of the range reads "auto": the model's recommended threshold (a threshold of 0 keeps every
        # query, which nobody wants, so the value is free for this).
        self.threshold_spin.setSpecialValueText("auto")
        self.threshold_spin.setToolTip("Minimum detection score; auto: the model's recommended threshold")
        self.threshold_spin.setValue(self._defaults.threshold or 0.0)
        self.segment_button = QPushButton("Segment")
        self.segment_button.setObjectName("segmentButton")
        self.segment_button.clicked.connect(self._on_segment_button)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.stage_label = QLabel("Ready")
        self.stage_label.setWordWrap(True)
        prompts_box = QGroupBox("Prompts (one concept per line)")
        options_row = QHBoxLayout()
        options_row.addWidget(QLabel("Mode"))
        options_row.addWidget(self.mode_combo, 1)
        options_row.addWidget(QLabel("Threshold"))
        options_row.addWidget(self.threshold_spin, 1)
        run_row = QHBoxLayout()
        run_row.addWidget(self.segment_button)
        run_row.addWidget(self.progress_bar, 1)
        box = QVBoxLayout(prompts_box)
        box.addWidget(self.prompt_edit)
        box.addLayout(options_row)
        box.addLayout(run_row)
        box.addWidget(self.stage_label)

        self.preset_combo = QComboBox()
        self.preset_combo.addItems([_AUTO, *CT_WINDOWS, _CUSTOM])
        self.preset_combo.currentTextChanged.connect(self._on_preset)
        self.centre_spin = QDoubleSpinBox()
        self.width_spin = QDoubleSpinBox()
        for spin in (self.centre_spin, self.width_spin):
            spin.setRange(-1e6, 1e6)
            spin.setDecimals(1)
            spin.setKeyboardTracking(False)
            spin.valueChanged.connect(self._on_window_spins)
        self.width_spin.setMinimum(1e-3)
        self.window_box = QGroupBox("Window / level (or right-drag in a view)")
        wl = QHBoxLayout(self.window_box)
        for text, widget in (("Preset", self.preset_combo), ("L", self.centre_spin), ("W", self.width_spin)):
            wl.addWidget(QLabel(text))
            wl.addWidget(widget, 1)

        self.opacity_slider = QSlider(Qt.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(45)
        self.opacity_slider.valueChanged.connect(
            lambda v: [view.set_opacity(v / 100.0) for view in self.views.values()])
        self.legend = SegmentLegend()
        self.legend.segment_clicked.connect(self.centre_on_segment)
        self.save_labels_button = QPushButton("Save label map…")
        self.save_labels_button.clicked.connect(self._ask_save_labelmap)
        self.save_seg_button = QPushButton("Save DICOM SEG…")
        self.save_seg_button.clicked.connect(self._ask_save_dicom_seg)
        segments_box = QGroupBox("Segments")
        seg_layout = QVBoxLayout(segments_box)
        opacity_row = QHBoxLayout()
        opacity_row.addWidget(QLabel("Opacity"))
        opacity_row.addWidget(self.opacity_slider)
        seg_layout.addLayout(opacity_row)
        seg_layout.addWidget(self.legend, 1)
        save_row = QHBoxLayout()
        save_row.addWidget(self.save_labels_button)
        save_row.addWidget(self.save_seg_button)
        seg_layout.addLayout(save_row)

        panel = QWidget()
        panel.setMinimumWidth(400)
        side = QVBoxLayout(panel)
        side.addWidget(prompts_box)
        side.addWidget(self.window_box)
        side.addWidget(segments_box, 1)

        splitter = QSplitter(Qt.Horizontal)
        splitter.addWidget(views)
        splitter.addWidget(panel)
        splitter.setStretchFactor(0, 1)
        self.setCentralWidget(splitter)
        self._build_menu()

    def _build_menu(self) -> None:
        menu = self.menuBar().addMenu("&File")
        for text, slot, shortcut in (
            ("&Open image…", self._ask_open_file, "Ctrl+O"),
            ("Open &DICOM folder…", self._ask_open_folder, "Ctrl+D"),
            ("&Save label map…", self._ask_save_labelmap, "Ctrl+S"),
            ("Save DICOM S&EG…", self._ask_save_dicom_seg, None),
            ("&Quit", self.close, "Ctrl+Q"),
        ):
            action = QAction(text, self)
            if shortcut:
                action.setShortcut(shortcut)
            action.triggered.connect(slot)
            menu.addAction(action)

    # -- state -----------------------------------------------------------------------------------------------------
    def _update_state(self) -> None:
        """Enable, label and explain every control for the current state (the only place that does)."""
        has_volume = self.volume is not None
        running = self.state != IDLE
        self.segment_button.setText("Cancel" if running else "Segment")
        self.segment_button.setEnabled(has_volume and self.state != CANCELLING)
        self.segment_button.setToolTip(
            {IDLE: "Segment every prompt in the volume" if has_volume else "Open an image first",
             RUNNING: "Stop after the current batch; nothing is kept",
             CANCELLING: "Waiting for the current batch to finish"}[self.state])
        for widget in (self.prompt_edit, self.mode_combo, self.threshold_spin):
            widget.setEnabled(not running)
        self.window_box.setEnabled(has_volume and not self.volume.is_rgb)
        has_result = self.result is not None and not running
        self.save_labels_button.setEnabled(has_result)
        is_dicom = has_volume and bool(self.volume.metadata.get("dicom_files"))
        self.save_seg_button.setEnabled(has_result and is_dicom)
        self.save_seg_button.setToolTip("" if is_dicom else "DICOM SEG needs a DICOM series as input")
        self.progress_bar.setTextVisible(running)
        if not running:
            self.progress_bar.setValue(0)

    def _set_status(self, text: str) -> None:
        self.stage_label.setText(text)

    def _error(self, message: str) -> None:
        """Show a user-facing error without blocking the event loop."""
        self.last_error = message
        self._set_status(f"Error: {message}")
        box = QMessageBox(QMessageBox.Warning, "Medical SAM3", message, QMessageBox.Ok, self)
        box.setAttribute(Qt.WA_DeleteOnClose)
        box.open()

    # -- volume and window/level -----------------------------------------------------------------------------------
    def load_volume(self, volume: Volume) -> None:
        """Show ``volume``; any previous result is dropped."""
        if self.state != IDLE:
            raise RuntimeError("cannot change the volume while a segmentation runs")
        self.volume, self.result = volume, None
        self.legend.set_segments([])
        self._normalizer = IntensityNormalizer.for_volume(volume, None)
        for name, view in self.views.items():
            view.set_volume(volume, self._normalizer)
            view.setVisible(name == "axial" or volume.shape[0] > 1)
        self._show_window_values()
        self.preset_combo.blockSignals(True)
        self.preset_combo.setCurrentText(_AUTO)
        self.preset_combo.blockSignals(False)
        source = volume.metadata.get("source", "")
        self.setWindowTitle(f"Medical SAM3 viewer — {Path(source).name}" if source else "Medical SAM3 viewer")
        spacing = " × ".join(f"{s:g}" for s in volume.spacing)
        kind = volume.modality or ("CT, from its Hounsfield values" if self._normalizer.inferred else "image")
        self.statusBar().showMessage(f"{source or 'volume'}: {kind}, "
                                     f"{' × '.join(map(str, volume.shape[::-1]))} voxels of {spacing} mm")
        self._set_status("Ready: type prompts and press Segment")
        self._update_state()

    def open_path(self, path: Union[str, Path]) -> bool:
        """Read an image file or DICOM folder and show it; errors go to :meth:`_error`."""
        from medsam3_core.io.reading import read_volume

        try:
            self.load_volume(read_volume(path))
        except MedSam3Error as err:
            self._error(str(err))
            return False
        return True

    def _show_window_values(self) -> None:
        assert self._normalizer is not None
        for spin, value in ((self.centre_spin, (self._normalizer.low + self._normalizer.high) / 2),
                            (self.width_spin, self._normalizer.high - self._normalizer.low)):
            spin.blockSignals(True)
            spin.setValue(value)
            spin.blockSignals(False)

    def _apply_normalizer(self, normalizer: IntensityNormalizer) -> None:
        self._normalizer = normalizer
        for view in self.views.values():
            view.set_normalizer(normalizer)

    def _on_preset(self, name: str) -> None:
        if self.volume is None or name == _CUSTOM:
            return
        self._apply_normalizer(IntensityNormalizer.for_volume(self.volume, None if name == _AUTO else name))
        self._show_window_values()

    def set_window(self, centre: float, width: float) -> None:
        """Display window (level, width); it is also what the model sees on the next run."""
        width = max(float(width), 1e-3)
        self._apply_normalizer(IntensityNormalizer(centre - width / 2, centre + width / 2,
                                                   f"window C={centre:g}, W={width:g}"))
        self._show_window_values()
        self.preset_combo.blockSignals(True)
        self.preset_combo.setCurrentText(_CUSTOM)
        self.preset_combo.blockSignals(False)

    def _on_window_spins(self, _value: float) -> None:
        self.set_window(self.centre_spin.value(), self.width_spin.value())

    def _drag_window(self, dx: int, dy: int) -> None:
        if self._normalizer is None or (self.volume is not None and self.volume.is_rgb):
            return
        width = self._normalizer.high - self._normalizer.low
        step = max(width, 1.0) / 200.0
        self.set_window((self._normalizer.low + self._normalizer.high) / 2 - dy * step, width + dx * step)

    def model_window(self) -> Window:
        """The window the model gets: automatic unless the user picked a preset or set one."""
        name = self.preset_combo.currentText()
        if name == _AUTO or self._normalizer is None:
            return None
        if name == _CUSTOM:
            low, high = self._normalizer.low, self._normalizer.high
            return ((low + high) / 2, high - low)
        return name

    # -- segmentation ----------------------------------------------------------------------------------------------
    def prompts(self) -> list[str]:
        return [line.strip() for line in self.prompt_edit.toPlainText().splitlines() if line.strip()]

    def _on_segment_button(self) -> None:
        if self.state == IDLE:
            self.start_segmentation()
        elif self.state == RUNNING:
            self.cancel_segmentation()

    def _get_segmenter(self, progress) -> Segmenter:
        """Runs on the worker thread: build the segmenter the first time, then reuse it."""
        if self._segmenter is None:
            self._segmenter = self._factory(progress)
        return self._segmenter

    def threshold(self) -> Optional[float]:
        """The threshold the user set, or ``None`` ("auto") for the model's recommended one."""
        value = self.threshold_spin.value()
        return None if value <= self.threshold_spin.minimum() else value

    def start_segmentation(self) -> bool:
        """Start segmenting the current prompts; returns False (with a message) when that is not possible."""
        if self.state != IDLE or self.volume is None:
            return False
        try:
            if not self.prompts():
                raise PromptError("Type at least one prompt (one concept per line), e.g. liver.")
            self._resolutions = resolve_prompts(self.prompts(), self._synonyms_file)
            options = SegmentOptions.from_dict({**self._defaults.to_dict(), "mode": self.mode_combo.currentText(),
                                                "threshold": self.threshold(),
                                                "window": self.model_window()})
        except MedSam3Error as err:
            self._error(str(err))
            return False
        self.last_error = None
        thread = SegmentationThread(self._get_segmenter, self.volume,
                                    [r.concept for r in self._resolutions], options, self)
        thread.progressed.connect(self._on_progress)
        thread.succeeded.connect(self._on_succeeded)
        thread.failed.connect(self._error)
        thread.cancelled.connect(lambda: self._set_status("Cancelled; nothing was kept."))
        thread.finished.connect(self._on_finished)
        thread.finished.connect(thread.deleteLater)
        self._thread = thread
        self.state = RUNNING
        self._set_status("Starting…")
        self._update_state()
        thread.start()
        return True

    def cancel_segmentation(self) -> None:
        if self._thread is not None and self.state == RUNNING:
            self._thread.cancel()
            self.state = CANCELLING
            self._set_status("Cancelling…")
            self._update_state()

    def _on_progress(self, stage: str, fraction: float) -> None:
        if self.state == RUNNING:
            self.progress_bar.setValue(int(fraction * 1000))
            self._set_status(f"{_STAGE_TEXT.get(stage, stage.capitalize())}… {fraction:.0%}")

    def _on_succeeded(self, result: SegmentationResult) -> None:
        for info, res in zip(result.segments, self._resolutions):
            info.prompt, info.concept = res.raw, res.concept
        self.result = result
        labels = np.asarray(result.labelmap.array)
        n_labels = max([s.label for s in result.segments] + [int(labels.max(initial=0))])
        for view in self.views.values():
            view.set_labels(labels, n_labels, self.opacity_slider.value() / 100.0)
        self.legend.set_segments(result.segments, planar=self.volume is not None and self.volume.shape[0] == 1)
        found = [s for s in result.segments if s.voxels]
        if found:
            self.centre_on_segment(max(found, key=lambda s: s.voxels).label)
        notes = list(result.warnings)
        for concept, raws in duplicate_concepts(self._resolutions).items():
            notes.append(f"{', '.join(raws)} all mean {concept!r}")
        total = result.seconds
        self._set_status(f"Found {len(found)} of {len(result.segments)} in {total:.1f} s"
                         + (f" — {'; '.join(n.rstrip('.') for n in notes)}." if notes else ""))

    def _on_finished(self) -> None:
        self.state = IDLE
        self._thread = None
        self._update_state()

    def centre_on_segment(self, label: int) -> None:
        """Move every view to the slice where ``label`` has its largest cross-section (no-op when it is empty).

        The largest cross-section, not the centre of mass: a curved or fragmented segment may miss its own centre.
        """
        if self.result is None:
            return
        mask = np.asarray(self.result.labelmap.array) == label
        if not mask.any():
            return
        for view in self.views.values():
            if view.plane is not None:
                view.set_index(int(np.argmax(view.plane.slice_profile(mask))))

    # -- saving ----------------------------------------------------------------------------------------------------
    def save_labelmap(self, path: Union[str, Path]) -> bool:
        """Write the label map (format from the extension: .nii.gz, .nrrd, .mha …) on the input's grid."""
        from medsam3_core.io.reading import write_volume

        if self.result is None:
            return False
        try:
            write_volume(self.result.labelmap, path)
        except MedSam3Error as err:
            self._error(str(err))
            return False
        self._set_status(f"Saved {path}")
        return True

    def save_dicom_seg(self, path: Union[str, Path]) -> bool:
        """Write a DICOM SEG referencing the input series (DICOM input only)."""
        from medsam3_core.io.dicom_seg import write_dicom_seg

        if self.result is None or self.volume is None:
            return False
        try:
            write_dicom_seg(self.result.labelmap, self.result.segments, self.volume, path,
                            model=self.result.model, synonyms_file=self._synonyms_file)
        except MedSam3Error as err:
            self._error(str(err))
            return False
        self._set_status(f"Saved {path}")
        return True

    def _ask_open_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open image", "",
                                              "Images (*.nii *.nii.gz *.nrrd *.nhdr *.mha *.mhd *.dcm *.png *.jpg "
                                              "*.jpeg *.tif *.tiff);;All files (*)")
        if path and self.state == IDLE:
            self.open_path(path)

    def _ask_open_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open DICOM folder")
        if path and self.state == IDLE:
            self.open_path(path)

    def _ask_save_labelmap(self) -> None:
        if self.result is None:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save label map", "labels.nii.gz",
                                              "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha)")
        if path:
            self.save_labelmap(path)

    def _ask_save_dicom_seg(self) -> None:
        if self.result is None or not self.save_seg_button.isEnabled():
            return
        path, _ = QFileDialog.getSaveFileName(self, "Save DICOM SEG", "segmentation.dcm", "DICOM (*.dcm)")
        if path:
            self.save_dicom_seg(path)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt override)
        """Closing while a run is going cancels it and waits for the worker, so no thread outlives the window."""
        if self._thread is not None:
            self._thread.cancel()
            self._thread.wait()
        super().closeEvent(event)
