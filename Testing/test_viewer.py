"""Standalone viewer under the offscreen Qt platform: views, window/level, Segment/Cancel, legend, saving."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("qtpy")
from qtpy.QtCore import Qt, QTimer  # noqa: E402

from medsam3_core.io.colors import segment_color  # noqa: E402
from medsam3_core.errors import ModelError  # noqa: E402
from medsam3_core.io.reading import read_volume  # noqa: E402
from medsam3_core.phantom import make_abdomen_phantom  # noqa: E402
from medsam3_core.segmenter import SegmentationResult, SegmentInfo, SegmentOptions  # noqa: E402
from medsam3_core.viewer.window import CANCELLING, IDLE, RUNNING, ViewerWindow  # noqa: E402


@pytest.fixture(scope="module")
def phantom():
    ct, labels, names = make_abdomen_phantom(seed=3, shape=(12, 48, 56), spacing=(1.6, 1.6, 5.0), randomize=False)
    return ct, labels, names


class OracleSegmenter:
    """Returns the phantom's true organ for each concept, slowly and cancellably, recording the worker thread."""

    def __init__(self, labels, names, steps: int = 4, delay: float = 0.02, fail: Exception | None = None) -> None:
        self.labels, self.ids = labels, {name: k for k, name in names.items()}
        self.steps, self.delay, self.fail = steps, delay, fail
        self.thread_ids: list[int] = []
        self.calls: list[tuple[list[str], SegmentOptions]] = []

    def segment(self, volume, prompts, options=None, progress=None, cancel=None):
        self.thread_ids.append(threading.get_ident())
        self.calls.append((list(prompts), options))
        for step in range(self.steps):
            if cancel is not None:
                cancel.raise_if_cancelled()
            progress("detect", step / self.steps)
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        out = np.zeros(volume.shape, np.uint8)
        segments = []
        for label, concept in enumerate(prompts, start=1):
            mask = self.labels.array == self.ids.get(concept, -1)
            out[mask] = label
            n = int(mask.sum())
            rng = tuple(int(v) for v in np.nonzero(mask.any(axis=(1, 2)))[0][[0, -1]]) if n else None
            segments.append(SegmentInfo(concept, concept, label, n, n * volume.voxel_volume_ml, 0.9 if n else 0.0,
                                        rng))
        return SegmentationResult(volume.with_array(out), segments, timings={"detect": 0.1}, options=options,
                                  model="oracle")


def _window(qtbot, volume, segmenter, prompts=("Liver", "renal", "pancreas")):
    window = ViewerWindow(lambda progress: segmenter, volume, prompts=prompts)
    qtbot.addWidget(window)
    window.resize(1100, 700)
    window.show()
    qtbot.waitExposed(window)
    return window


def _run(qtbot, window, timeout=20000):
    qtbot.mouseClick(window.segment_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: window.state == IDLE, timeout=timeout)


def test_views_show_the_volume_in_three_planes(qtbot, phantom):
    ct, labels, names = phantom
    window = _window(qtbot, ct, OracleSegmenter(labels, names))
    for name, view in window.views.items():
        assert view.isVisible() and view.image.pixmap() is not None and not view.image.pixmap().isNull()
        assert view.plane.view == name
    axial = window.views["axial"]
    assert axial.slider.maximum() == 11 and axial.index == 6
    before = axial.rendered().copy()
    axial.set_index(2)
    assert axial.position.text() == "3 / 12" and not np.array_equal(before, axial.rendered())
    assert window.segment_button.text() == "Segment" and window.segment_button.isEnabled()
    assert not window.save_labels_button.isEnabled() and not window.save_seg_button.isEnabled()


def test_window_level_presets_spins_and_drag(qtbot, phantom):
    ct, labels, names = phantom
    window = _window(qtbot, ct, OracleSegmenter(labels, names))
    assert (window.centre_spin.value(), window.width_spin.value()) == (40.0, 400.0)  # CT soft-tissue default
    assert window.model_window() is None
    window.preset_combo.setCurrentText("lung")
    assert (window.centre_spin.value(), window.width_spin.value()) == (-600.0, 1500.0)
    assert window.model_window() == "lung"
    def saturated() -> float:  # fraction of pure black or white pixels
        return float(np.isin(window.views["axial"].rendered(), (0, 255)).mean())

    wide = saturated()
    window.width_spin.setValue(100.0)
    assert window.preset_combo.currentText() == "custom" and window.model_window() == (-600.0, 100.0)
    assert saturated() > 0.95 > wide + 0.2, "a narrow window turns the picture black and white"
    window.views["axial"].window_dragged.emit(200, 0)
    assert window.width_spin.value() == pytest.approx(200.0)


def test_segment_runs_off_the_gui_thread_and_fills_the_legend(qtbot, phantom, tmp_path):
    ct, labels, names = phantom
    oracle = OracleSegmenter(labels, names, steps=10, delay=0.05)
    window = _window(qtbot, ct, oracle)
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(window.state))
    timer.start(20)
    qtbot.mouseClick(window.segment_button, Qt.LeftButton)
    assert window.state == RUNNING and window.segment_button.text() == "Cancel"
    assert not window.prompt_edit.isEnabled()
    qtbot.waitUntil(lambda: window.state == IDLE, timeout=20000)
    timer.stop()
    assert ticks.count(RUNNING) >= 5, "the event loop kept running while the model worked"
    assert oracle.thread_ids and oracle.thread_ids[0] != threading.get_ident()
    assert oracle.calls[0][0] == ["liver", "kidney", "pancreas"], "the model gets canonical concepts"
    assert window.threshold_spin.text() == "auto" and oracle.calls[0][1].threshold is None  # the model's own
    window.threshold_spin.setValue(0.35)
    assert window.threshold() == 0.35

    assert window.last_error is None and window.result is not None
    rows = window.legend.rows()
    assert [r[1:3] for r in rows] == [["Liver", "liver"], ["renal", "kidney"], ["pancreas", "pancreas"]]
    kidney = window.result.segments[1]
    assert rows[1][3] == f"{kidney.volume_ml:.1f}" and rows[1][4] == "0.90"
    assert window.legend.item(0, 0).background().color().getRgb()[:3] == segment_color(1)

    for view in window.views.values():
        view.set_index(0)
    window.legend.segment_clicked.emit(1)
    for view in window.views.values():
        assert view.index == int(np.argmax(view.plane.slice_profile(labels.array == 1)))
    window.opacity_slider.setValue(100)
    shown = window.views["axial"].rendered()
    liver_slice = window.views["axial"].plane.extract(labels.array, window.views["axial"].index) == 1
    assert np.all(shown[liver_slice] == segment_color(1)), "the overlay uses the shared colour table"

    assert window.save_labels_button.isEnabled() and not window.save_seg_button.isEnabled()
    assert window.save_labelmap(tmp_path / "labels.nrrd")
    saved = read_volume(tmp_path / "labels.nrrd")
    assert saved.same_geometry(ct)
    np.testing.assert_array_equal(saved.array, window.result.labelmap.array)


def test_cancel_stops_the_run_and_keeps_nothing(qtbot, phantom):
    ct, labels, names = phantom
    window = _window(qtbot, ct, OracleSegmenter(labels, names, steps=400, delay=0.02))
    qtbot.mouseClick(window.segment_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: window.progress_bar.value() > 0, timeout=5000)
    started = time.monotonic()
    qtbot.mouseClick(window.segment_button, Qt.LeftButton)
    assert window.state == CANCELLING and not window.segment_button.isEnabled()
    qtbot.waitUntil(lambda: window.state == IDLE, timeout=5000)
    assert time.monotonic() - started < 2.0, "cancel takes effect within one step"
    assert window.result is None and "Cancelled" in window.stage_label.text()
    assert window.segment_button.text() == "Segment" and window.prompt_edit.isEnabled()


def test_errors_are_shown_without_blocking(qtbot, phantom):
    ct, labels, names = phantom
    window = _window(qtbot, ct, OracleSegmenter(labels, names, fail=ModelError("Model folder x has no weights.")))
    _run(qtbot, window)
    assert window.last_error == "Model folder x has no weights." and window.result is None
    window.prompt_edit.setPlainText("  \n ")
    assert not window.start_segmentation() and "at least one prompt" in window.last_error
    assert window.state == IDLE


def test_dicom_input_saves_a_dicom_seg(qtbot, phantom, tmp_path):
    import highdicom as hd
    from builders import write_dicom_series

    ct, labels, names = phantom
    write_dicom_series(tmp_path / "dcm", ct.array, ct.spacing, ct.origin, ct.direction)
    volume = read_volume(tmp_path / "dcm")
    window = _window(qtbot, volume, OracleSegmenter(volume.with_array(labels.array), names), prompts=("kidney",))
    _run(qtbot, window)
    assert window.save_seg_button.isEnabled()
    assert window.save_dicom_seg(tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["kidney"]


def test_viewer_segments_the_demo_with_the_demo_model_and_saves(qtbot, tmp_path):
    """End to end: bundled demo scan + demo model, Segment, wait, save."""
    from medsam3_core.phantom import demo_paths
    from medsam3_core.viewer.cli import segmenter_factory

    volume = read_volume(demo_paths().ct)
    window = ViewerWindow(segmenter_factory("demo", "cpu"), volume, prompts=["liver", "Kidneys"],
                          options=SegmentOptions(mode="detect"))
    qtbot.addWidget(window)
    window.show()
    qtbot.waitExposed(window)
    _run(qtbot, window, timeout=240000)
    assert window.last_error is None and window.result is not None
    assert [r[1:3] for r in window.legend.rows()] == [["liver", "liver"], ["Kidneys", "kidney"]]
    assert window.save_labelmap(tmp_path / "demo_labels.nii.gz")
    saved = read_volume(tmp_path / "demo_labels.nii.gz")
    assert saved.same_geometry(volume) and set(np.unique(saved.array)) <= {0, 1, 2}


def test_view_command_screenshot(tmp_path, phantom):
    from medsam3_core.cli.main import main
    from medsam3_core.io.reading import write_volume

    ct, _, _ = phantom
    write_volume(ct, tmp_path / "ct.nii.gz")
    shot = tmp_path / "shot.png"
    assert main(["view", str(tmp_path / "ct.nii.gz"), "--screenshot", str(shot), "--size", "900x600"]) == 0
    from PIL import Image

    width, height = Image.open(shot).size
    assert width == 900 and height >= 600
    assert main(["view", str(tmp_path / "missing.nii.gz"), "--screenshot", str(shot)]) == 2


def test_a_2d_colour_picture_shows_one_view_without_window_controls(qtbot, phantom):
    from medsam3_core.io.geometry import Volume

    ct, labels, names = phantom
    rgb = np.zeros((1, 30, 40, 3), np.uint8)
    rgb[0, 10:20, 5:15] = (200, 120, 90)
    picture = Volume(rgb, modality="RGB")
    window = _window(qtbot, picture, OracleSegmenter(labels, names))
    assert window.views["axial"].isVisible()
    assert not window.views["coronal"].isVisible() and not window.views["sagittal"].isVisible()
    assert not window.window_box.isEnabled()
    shown = window.views["axial"].rendered()
    assert shown.shape == (30, 40, 3) and tuple(shown[15, 10]) == (200, 120, 90)


def test_ctrl_enter_segments_from_the_prompt_box(qtbot, phantom):
    ct, labels, names = phantom
    window = _window(qtbot, ct, OracleSegmenter(labels, names), prompts=("spleen",))
    qtbot.keyClick(window.prompt_edit, Qt.Key_Return, Qt.ControlModifier)
    assert window.state == RUNNING
    qtbot.waitUntil(lambda: window.state == IDLE, timeout=20000)
    assert window.legend.rows()[0][1:3] == ["spleen", "spleen"]
    assert window.prompt_edit.toPlainText() == "spleen", "the shortcut does not type a newline"


def test_remote_server_that_is_down_gives_one_line(qtbot, phantom):
    import socket

    from medsam3_core.viewer.cli import segmenter_factory

    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ct, _, _ = phantom
    window = ViewerWindow(segmenter_factory(server=f"http://127.0.0.1:{port}", api_key="key"), ct, prompts=["liver"])
    qtbot.addWidget(window)
    _run(qtbot, window)
    assert window.result is None and window.last_error and "\n" not in window.last_error
    assert str(port) in window.last_error or "connect" in window.last_error.lower()
