"""The Slicer module's logic, run through the MRML stand-in (Testing/slicer_standin) since Slicer cannot be installed.

The geometry tests are the point: a label map must come back on the very physical points of the input, for an
oblique volume with anisotropic spacing, through every hop (volume node → NRRD → CLI process → NRRD → segment).
"""

import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "Testing" / "slicer_standin"
sys.path[:0] = [str(STANDIN), str(ROOT / "MedicalSAM3Slicer")]

import slicer  # noqa: E402  (the stand-in)
import vtk  # noqa: E402
from MedicalSAM3SlicerLib import (  # noqa: E402
    CliJob,
    JobEvent,
    Parameters,
    ProcessingState,
    RunRequest,
    ThreadJob,
    infer_command,
    install_commands,
    missing_requirements,
    parse_event_line,
    read_nrrd,
    segments_from_labelmap,
    summary_line,
    write_nrrd,
)
from MedicalSAM3SlicerLib.dependencies import REQUIREMENTS, InstallError, nvidia_cuda_version, torch_index_url  # noqa: E402

import MedicalSAM3Slicer as module  # noqa: E402

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# Oblique (rotated 30° about S, then tilted) and anisotropic: any axis or sign mix-up moves points.
_c, _s = np.cos(np.pi / 6), np.sin(np.pi / 6)
DIRECTION_LPS = np.array([[_c, -_s, 0.0], [_s, _c, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1.0, 0.0, 0.0], [0.0, np.cos(0.2), -np.sin(0.2)], [0.0, np.sin(0.2), np.cos(0.2)]])
SPACING = (0.7, 1.3, 3.0)
ORIGIN_LPS = (12.5, -40.0, 100.0)


@pytest.fixture(autouse=True)
def _clean_scene(monkeypatch):
    slicer.mrmlScene.Clear(True)
    slicer.calls.clear()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(STANDIN), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(module.MedicalSAM3SlicerLogic, "cliModule", "threshold_cli")
    yield
    slicer.mrmlScene.Clear(True)


def _itk_phantom() -> sitk.Image:
    """An ITK image (LPS) with a bright off-centre box, oblique and anisotropic."""
    voxels = np.full((9, 14, 11), -100, dtype=np.int16)
    voxels[2:5, 3:9, 6:10] = 200
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN_LPS)
    image.SetDirection(DIRECTION_LPS.ravel().tolist())
    return image


def _load_like_slicer(image: sitk.Image, name: str = "CT"):
    """What Slicer's reader does with an ITK image: same voxels, geometry flipped from LPS to RAS."""
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    node.SetSpacing(image.GetSpacing())
    node.SetOrigin(LPS_TO_RAS @ np.array(image.GetOrigin()))
    node.SetIJKToRASDirections(LPS_TO_RAS @ np.array(image.GetDirection()).reshape(3, 3))
    return node


def _ras_of_itk_voxels(image: sitk.Image, kji: np.ndarray) -> np.ndarray:
    """RAS of voxel centres computed by ITK itself (LPS) and flipped: the ground truth of every geometry test."""
    lps = [image.TransformIndexToPhysicalPoint([int(i), int(j), int(k)]) for k, j, i in kji]
    return (LPS_TO_RAS @ np.array(lps).T).T


def _segment_ras_points(segmentationNode, segmentId: str) -> np.ndarray:
    labelmap = slicer.vtkOrientedImageData()
    assert segmentationNode.GetBinaryLabelmapRepresentation(segmentId, labelmap)
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    kji = np.argwhere(labelmap.array > 0)
    return (m @ np.c_[kji[:, ::-1], np.ones(len(kji))].T).T[:, :3]


def _sorted(points: np.ndarray) -> np.ndarray:
    return points[np.lexsort(np.round(points, 3).T[::-1])]


# -- the stand-in follows Slicer's and ITK's conventions ---------------------------------------------------------------
def test_standin_volume_node_matches_itk_physical_points():
    image = _itk_phantom()
    node = _load_like_slicer(image)
    m = module.MedicalSAM3SlicerLogic.ijkToRasArray(node)
    kji = np.array([[0, 0, 0], [8, 13, 10], [3, 5, 7], [1, 12, 2]])
    ras = (m @ np.c_[kji[:, ::-1], np.ones(len(kji))].T).T[:, :3]
    np.testing.assert_allclose(ras, _ras_of_itk_voxels(image, kji), atol=1e-9)
    assert slicer.util.arrayFromVolume(node).shape == (9, 14, 11)  # [k, j, i]
    # the 9-value SetIJKToRASDirections(ir, jr, kr, ia, ja, ka, is, js, ks) form is row by row, as in Slicer
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    other.SetIJKToRASDirections(*(LPS_TO_RAS @ DIRECTION_LPS).ravel())
    other.SetSpacing(SPACING)
    other.SetOrigin(LPS_TO_RAS @ np.array(ORIGIN_LPS))
    np.testing.assert_allclose(module.MedicalSAM3SlicerLogic.ijkToRasArray(other), m)


def test_core_volume_from_slicer_matrix_agrees_with_itk():
    from medsam3_core.io.geometry import Volume

    image = _itk_phantom()
    node = _load_like_slicer(image)
    ijk_to_ras = module.MedicalSAM3SlicerLogic.ijkToRasArray(node)
    volume = Volume.from_ijk_to_ras(slicer.util.arrayFromVolume(node), ijk_to_ras)
    np.testing.assert_allclose(volume.spacing, SPACING)
    np.testing.assert_allclose(volume.origin, ORIGIN_LPS)
    np.testing.assert_allclose(volume.direction, DIRECTION_LPS, atol=1e-12)


def test_module_loads_without_the_core_and_never_imports_torch():
    """Slicer loads the module before the first-run install: it must import with neither torch nor the core."""
    import subprocess

    code = (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'medsam3_core', 'SimpleITK'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.path[:0] = [{str(STANDIN)!r}, {str(ROOT / 'MedicalSAM3Slicer')!r}]\n"
        "import MedicalSAM3Slicer\n"
        "w = [m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'medsam3_core')]\n"
        "print('loaded', w)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "loaded []"


# -- NRRD hand-over ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False])
def test_nrrd_round_trip_through_simpleitk(tmp_path, compress):
    image = _itk_phantom()
    node = _load_like_slicer(image)
    ijk_to_ras = module.MedicalSAM3SlicerLogic.ijkToRasArray(node)
    path = write_nrrd(tmp_path / "in.nrrd", slicer.util.arrayFromVolume(node), ijk_to_ras, compress=compress)
    back = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(back.GetSpacing(), SPACING)
    np.testing.assert_allclose(back.GetOrigin(), ORIGIN_LPS, atol=1e-9)
    np.testing.assert_allclose(np.array(back.GetDirection()).reshape(3, 3), DIRECTION_LPS, atol=1e-9)
    sitk.WriteImage(image, str(tmp_path / "itk.nrrd"), compress)
    array, matrix = read_nrrd(tmp_path / "itk.nrrd")
    np.testing.assert_array_equal(array, sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(matrix, ijk_to_ras, atol=1e-9)


def test_nrrd_reads_ras_space_and_rejects_detached(tmp_path):
    (tmp_path / "ras.nrrd").write_bytes(
        b"NRRD0004\ntype: uint8\ndimension: 3\nspace: right-anterior-superior\nsizes: 2 1 1\n"
        b"space directions: (2,0,0) (0,3,0) (0,0,4)\nencoding: raw\nspace origin: (1,2,3)\n\n\x05\x07")
    array, matrix = read_nrrd(tmp_path / "ras.nrrd")
    assert array.tolist() == [[[5, 7]]]
    np.testing.assert_allclose(matrix[:3], [[2, 0, 0, 1], [0, 3, 0, 2], [0, 0, 4, 3]])
    (tmp_path / "det.nrrd").write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 1 1 1\ndata file: x.raw\n\n")
    with pytest.raises(ValueError, match="detached"):
        read_nrrd(tmp_path / "det.nrrd")


# -- the proof: through the process and back into a segment, same physical points --------------------------------------
def test_labelmap_lands_on_the_input_physical_points(qapp):
    image = _itk_phantom()
    node = _load_like_slicer(image)
    logic = module.MedicalSAM3SlicerLogic()
    output = logic.process(node, None, RunRequest(prompts=["bright box", "nothing"], device="cpu"))

    segmentation = output.GetSegmentation()
    assert [segmentation.GetNthSegment(n).GetName() for n in range(2)] == ["bright box", "nothing"]
    box = segmentation.GetSegmentIdBySegmentName("bright box")
    got = _segment_ras_points(output, box)
    expected = _ras_of_itk_voxels(image, np.argwhere(sitk.GetArrayFromImage(image) > 0))
    assert len(got) == 3 * 6 * 4
    np.testing.assert_allclose(_sorted(got), _sorted(expected), atol=1e-6)
    assert len(_segment_ras_points(output, segmentation.GetSegmentIdBySegmentName("nothing"))) == 0
    tag = vtk.reference("")
    assert segmentation.GetSegment(box).GetTag(module.CONFIDENCE_TAG, tag) and float(tag.get()) == pytest.approx(0.9)
    assert segmentation.GetSegment(box).GetTag(module.SOURCE_TAG, tag) and tag.get() == "threshold"
    assert output.closedSurface and output.GetDisplayNode() is not None
    centre = output.GetSegmentCenterRAS(box)
    np.testing.assert_allclose(centre, expected.mean(axis=0), atol=1e-6)


def test_existing_segments_with_the_same_name_are_replaced_others_kept(qapp):
    node = _load_like_slicer(_itk_phantom())
    output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    output.CreateDefaultDisplayNodes()
    segmentation = output.GetSegmentation()
    manual = segmentation.AddEmptySegment("", "manual", (0.1, 0.2, 0.3))
    old = segmentation.AddEmptySegment("", "Bright Box", (0.4, 0.5, 0.6))
    logic = module.MedicalSAM3SlicerLogic()
    assert logic.process(node, output, RunRequest(prompts=["bright box"])) is output
    assert segmentation.GetSegmentIDs() == [manual, old]  # replaced in place: same id, colour kept
    assert segmentation.GetSegment(old).GetColor() == (0.4, 0.5, 0.6)
    assert len(_segment_ras_points(output, old)) == 72


def test_failure_leaves_scene_unchanged_and_cleans_temp(qapp, tmp_path, monkeypatch):
    node = _load_like_slicer(_itk_phantom())
    monkeypatch.setattr(module.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(module, "write_nrrd", lambda path, *a, **k: Path(path))  # the child finds no input file
    with pytest.raises(RuntimeError, match="does not exist"):
        module.MedicalSAM3SlicerLogic().process(node, None, RunRequest(prompts=["x"]))
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode") == []
    assert not (tmp_path / "run").exists()


def test_bad_requests_fail_before_anything_starts(qapp):
    node = _load_like_slicer(_itk_phantom())
    logic = module.MedicalSAM3SlicerLogic()
    with pytest.raises(ValueError, match="at least one prompt"):
        logic.process(node, None, RunRequest(prompts=[]))
    with pytest.raises(ValueError, match="does not exist"):
        logic.process(node, None, RunRequest(prompts=["liver"], model_source="checkpoint", checkpoint="/no/such"))
    with pytest.raises(ValueError, match="http://host:port"):
        logic.process(node, None, RunRequest(prompts=["liver"], model_source="remote", server_url="gpu:8000"))
    with pytest.raises(ValueError, match="scalar input volume"):
        logic.process(None, None, RunRequest(prompts=["liver"]))
    with pytest.raises(ValueError, match="CENTRE,WIDTH"):
        logic.process(node, None, RunRequest(prompts=["liver"], window="40;400"))


def test_non_blocking_run_reports_progress_then_done_via_qtimer(qtbot):
    node = _load_like_slicer(_itk_phantom())
    logic = module.MedicalSAM3SlicerLogic()
    events = []
    assert logic.process(node, None, RunRequest(prompts=["box"]), waitForCompletion=False,
                         eventCallback=events.append) is None
    qtbot.waitUntil(lambda: bool(events) and events[-1].terminal, timeout=20000)
    kinds = [e.kind for e in events]
    assert kinds[0] == "progress" and kinds[-2:] == ["importing", "done"], kinds
    assert events[-1].message.startswith("box ") and "s (" in events[-1].message
    assert logic.lastOutputSegmentation.GetSegmentation().GetNumberOfSegments() == 1


# -- background process: protocol, cancel, process tree ----------------------------------------------------------------
def _fake(tmp_path, *flags):
    return [sys.executable, "-m", "threshold_cli", "infer", str(tmp_path / "none.nrrd"), "x", "-o",
            str(tmp_path / "out"), *flags]


def test_parse_event_line():
    assert parse_event_line('{"event":"progress","stage":"detect","fraction":0.25}') == JobEvent(
        "progress", stage="detect", fraction=0.25)
    assert parse_event_line('{"event":"progress","stage":"x","fraction":7}').fraction == 1.0
    done = parse_event_line('{"event":"done","output":"/o","report":{"segments":[]}}')
    assert done.terminal and done.output == "/o" and done.report == {"segments": []}
    assert parse_event_line('{"event":"error","message":"bad"}') == JobEvent("error", message="bad")
    assert parse_event_line("Warning: something").kind == "log"
    assert parse_event_line('{"event":"other"}').kind == "log"
    assert parse_event_line("[1, 2]").kind == "log"


def test_infer_command_matches_the_cli_contract():
    cmd = infer_command("py", "/in.nrrd", ["liver", "left kidney"], "/out", model="/m.pt", device="cuda",
                        mode="detect", threshold=0.35, window="40,400", slice_axis="coronal", cleanup=True,
                        modality="CT")
    assert cmd == ["py", "-m", "medsam3_core.volume", "infer", "/in.nrrd", "liver", "left kidney", "-o", "/out",
                   "--model", "/m.pt", "--device", "cuda", "--mode", "detect", "--threshold", "0.35",
                   "--slice-axis", "coronal", "--format", "nrrd", "--progress", "json", "--window", "40,400",
                   "--cleanup", "--modality", "CT"]
    from medsam3_core.cli.infer import add_arguments
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(cmd[4:])
    assert (args.prompts, args.format, args.progress, args.threshold) == (["liver", "left kidney"], "nrrd", "json",
                                                                          0.35)
    auto = infer_command("py", "/in.nrrd", ["liver"], "/out", threshold=None)
    assert "--threshold" not in auto and parser.parse_args(auto[4:]).threshold is None  # the model's own


def test_the_models_threshold_is_the_default_request():
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    params = Parameters(node)
    params.prompts = "liver"
    assert params.useModelThreshold is True and RunRequest.from_parameters(params).threshold is None
    params.useModelThreshold, params.threshold = False, 0.3
    assert RunRequest.from_parameters(params).threshold == 0.3
    RunRequest(prompts=["liver"], threshold=None).validate()
    assert RunRequest(prompts=["liver"]).options_dict()["threshold"] is None


def test_error_exit_gives_one_error_event_with_the_message(tmp_path):
    job = CliJob(_fake(tmp_path), env=os.environ)
    job.start()
    events = job.wait(timeout=30)
    terminal = [e for e in events if e.terminal]
    assert [e.kind for e in terminal] == ["error"] and "does not exist" in terminal[0].message
    assert any(e.kind == "log" and "library printed" in e.message for e in events)
    assert job.returncode == 2 and "does not exist" in job.stderr_tail


def test_unreported_crash_becomes_an_error_event(tmp_path):
    job = CliJob([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(1)"])
    job.start()
    (event,) = [e for e in job.wait(timeout=30) if e.terminal]
    assert event.kind == "error" and "exit code 1" in event.message and "boom" in event.message


def test_missing_program_is_a_clear_error():
    with pytest.raises(RuntimeError, match="Could not start"):
        CliJob(["/no/such/PythonSlicer", "-m", "x"]).start()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cancel_stops_gracefully_with_sigint(tmp_path):
    job = CliJob(_fake(tmp_path, "--hang"), env=os.environ)
    job.start()
    _wait_for_progress(job)
    t0 = time.monotonic()
    job.cancel()
    events = job.wait(timeout=30)
    assert [e.kind for e in events if e.terminal] == ["cancelled"]
    assert job.returncode == 3 and time.monotonic() - t0 < 5


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_cancel_kills_the_whole_process_tree_when_sigint_is_ignored(tmp_path):
    pidfile = tmp_path / "grandchild.pid"
    job = CliJob(_fake(tmp_path, "--hang", "--ignore-sigint", "--grandchild", str(pidfile)), env=os.environ,
                 grace_s=0.5)
    job.start()
    _wait_for_progress(job)
    grandchild = int(pidfile.read_text())
    job.cancel()
    events = job.wait(timeout=30)
    assert [e.kind for e in events if e.terminal] == ["cancelled"]
    assert job.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the grandchild (the interpreter behind a launcher) survived the cancel"


def _wait_for_progress(job) -> None:
    deadline = time.monotonic() + 30
    while not any(e.kind == "progress" for e in job.poll()):
        assert time.monotonic() < deadline, job.stderr_tail
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (reaped later by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def test_widget_cancel_through_logic_leaves_scene_unchanged(qtbot, monkeypatch):
    monkeypatch.setattr(module, "infer_command", lambda *a, **k: _fake_hang_command(*a, **k))
    node = _load_like_slicer(_itk_phantom())
    logic = module.MedicalSAM3SlicerLogic()
    events = []
    logic.process(node, None, RunRequest(prompts=["box"]), waitForCompletion=False, eventCallback=events.append)
    qtbot.waitUntil(lambda: any(e.kind == "progress" for e in events), timeout=20000)
    logic.cancel()
    qtbot.waitUntil(lambda: bool(events) and events[-1].terminal, timeout=20000)
    assert events[-1].kind == "cancelled"
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode") == []


def _fake_hang_command(python, input_path, prompts, output_dir, **kwargs):
    return infer_command(python, input_path, prompts, output_dir, **kwargs) + ["--hang"]


# -- remote runs in a thread -------------------------------------------------------------------------------------------
def test_thread_job_reports_progress_result_errors_and_cancel():
    from medsam3_core.errors import InputError

    def work(progress, cancel):
        progress("upload", 0.5)
        progress("detect", 2.0)
        return "result"

    job = ThreadJob(work)
    job.start()
    events = job.wait(timeout=10)
    assert [(e.kind, e.stage, e.fraction) for e in events[:2]] == [("progress", "upload", 0.5),
                                                                    ("progress", "detect", 1.0)]
    assert events[-1].kind == "done" and events[-1].result == "result"

    def failing(progress, cancel):
        raise InputError("The volume is empty.")

    job = ThreadJob(failing)
    job.start()
    assert job.wait(timeout=10)[-1] == JobEvent("error", message="The volume is empty.")

    def cancellable(progress, cancel):
        while True:
            cancel.raise_if_cancelled()
            time.sleep(0.01)

    job = ThreadJob(cancellable)
    job.start()
    job.cancel()
    assert job.wait(timeout=10)[-1].kind == "cancelled"


class _ThresholdEngine:
    """Stands in for the GPU model behind a real loopback ``medsam3 serve`` app: label 1 = voxels above 0."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.calls = delay, []

    def segment(self, volume, prompts, options=None, progress=None, cancel=None, concepts=None):
        from medsam3_core.segmenter import SegmentationResult, SegmentInfo

        self.calls.append((list(prompts), options, concepts))
        for k in range(volume.shape[0]):
            if cancel is not None:
                cancel.raise_if_cancelled()
            time.sleep(self.delay)
            progress("detect", (k + 1) / volume.shape[0])
        labels = volume.with_array((volume.array > 0).astype(np.uint8))
        infos = [SegmentInfo(p, p, n, int((labels.array == n).sum()), 0.1, 0.8 if n == 1 else 0.0, None)
                 for n, p in enumerate(prompts, 1)]
        return SegmentationResult(labels, infos, model="threshold-server", options=options)


def _serve(engine):
    from medsam3_core.server.app import create_app
    from medsam3_core.server.runner import BackgroundServer

    return BackgroundServer(create_app(engine, api_key="slicer-test-key-0123456789"))


def test_remote_run_over_http_imports_the_result_on_the_input_grid(qapp):
    engine = _ThresholdEngine()
    image = _itk_phantom()
    node = _load_like_slicer(image)
    with _serve(engine) as url:
        logic = module.MedicalSAM3SlicerLogic()
        info = logic.testConnection(url, "slicer-test-key-0123456789")
        assert module.describe_server(info).startswith("Connected to Medical SAM3 server ")
        with pytest.raises(RuntimeError, match="(?i)key"):
            logic.testConnection(url, "wrong-key-0123456789abcdef")
        events = []
        request = RunRequest(prompts=["Kidneys", "nothing"], model_source="remote", server_url=url,
                             api_key="slicer-test-key-0123456789", threshold=0.3, window="lung")
        output = logic.process(node, None, request, eventCallback=events.append)
    from medsam3_core.prompts import resolve_prompts

    ((prompts, options, concepts),) = engine.calls
    assert options.threshold == 0.3 and options.window == "lung"
    assert concepts == [r.concept for r in resolve_prompts(["Kidneys", "nothing"])]  # synonyms resolved as the CLI does
    assert {"upload", "download"} <= {e.stage for e in events if e.kind == "progress"}
    segmentation = output.GetSegmentation()
    assert [segmentation.GetNthSegment(n).GetName() for n in range(2)] == ["Kidneys", "nothing"]
    got = _segment_ras_points(output, segmentation.GetSegmentIdBySegmentName("Kidneys"))
    expected = _ras_of_itk_voxels(image, np.argwhere(sitk.GetArrayFromImage(image) > 0))
    np.testing.assert_allclose(_sorted(got), _sorted(expected), atol=1e-6)
    tag = vtk.reference("")
    assert segmentation.GetNthSegment(0).GetTag(module.SOURCE_TAG, tag) and tag.get() == "threshold-server"


def test_remote_cancel_stops_the_server_job_and_leaves_the_scene_unchanged(qtbot):
    engine = _ThresholdEngine(delay=0.3)
    node = _load_like_slicer(_itk_phantom())
    with _serve(engine) as url:
        logic = module.MedicalSAM3SlicerLogic()
        events = []
        request = RunRequest(prompts=["box"], model_source="remote", server_url=url,
                             api_key="slicer-test-key-0123456789")
        logic.process(node, None, request, waitForCompletion=False, eventCallback=events.append)
        qtbot.waitUntil(lambda: any(e.stage == "detect" for e in events), timeout=20000)
        logic.cancel()
        qtbot.waitUntil(lambda: bool(events) and events[-1].terminal, timeout=20000)
    assert events[-1].kind == "cancelled"
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode") == []


# -- Slicer-independent pieces -----------------------------------------------------------------------------------------
def test_describe_server():
    info = {"version": "0.1.0", "model": {"model": "medsam3-ct", "device": "cuda"},
            "queue": {"running": 1, "queued": 2}}
    assert module.describe_server(info) == (
        "Connected to Medical SAM3 server 0.1.0: model medsam3-ct on cuda; 1 running, 2 waiting.")
    assert module.describe_server({}) == "Connected to Medical SAM3 server ?: model unknown model."


def test_segments_from_labelmap_follow_prompt_order_and_report():
    labels = np.zeros((2, 3, 4), np.uint8)
    labels[0, 0, :2] = 2
    segments = segments_from_labelmap(labels, ["liver", "spleen"], [{"label": 2, "score": 0.7, "volume_ml": 0.5}])
    assert [(s.name, s.label, s.voxels, s.score) for s in segments] == [("liver", 1, 0, None), ("spleen", 2, 2, 0.7)]
    assert segments[0].color != segments[1].color
    with pytest.raises(ValueError, match=r"labels \[3\]"):
        segments_from_labelmap(np.full((1, 1, 1), 3, np.uint8), ["a", "b"])


def test_summary_line_names_sizes_scores_timings_and_model():
    found = segments_from_labelmap(np.ones((1, 2, 2), np.uint8), ["liver", "tumor"],
                                   [{"label": 1, "score": 0.912, "volume_ml": 1520.34}])
    text = summary_line(found, {"load": 3.12, "encode": 6.2, "fuse": 0.01, "total": 9.4}, 12.43, "medsam3-ct")
    dot = "\u00b7"
    assert text == (f"liver 1520.3 mL (0.91), tumor: not found {dot} 12.4 s (load 3.1, encode 6.2) "
                    f"{dot} model: medsam3-ct")


def test_parameters_are_typed_and_defaulted():
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    params = Parameters(node)
    assert params.threshold == 0.5 and params.cleanup is False and params.modelSource == "demo"
    params.set_defaults()
    assert node.GetParameter("cleanup") == "false" and node.GetParameter("threshold") == "0.5"
    params.threshold, params.cleanup = 0.25, True
    assert node.GetParameter("threshold") == "0.25" and Parameters(node).cleanup is True
    node.SetParameter("threshold", "abc")
    node.SetParameter("mode", "segment-everything")
    assert params.threshold == 0.5 and params.mode == "track"  # malformed or unknown values fall back
    with pytest.raises(ValueError, match="must be one of"):
        params.device = "tpu"
    with pytest.raises(AttributeError):
        params.nonsense = 1
    params.prompts = " liver \n\nLiver\nleft   kidney\n"
    assert params.prompt_list() == ["liver", "left kidney"]


def test_processing_state_drives_the_button():
    assert ProcessingState.IDLE.button_text == "Segment by text" and not ProcessingState.IDLE.busy
    assert ProcessingState.RUNNING.button_text == "Cancel" and ProcessingState.RUNNING.button_enabled
    assert ProcessingState.STARTING.button_text == "Cancel"
    assert not ProcessingState.CANCELLING.button_enabled and not ProcessingState.IMPORTING.button_enabled
    assert ProcessingState.FAILED.button_text == "Segment by text" and "failed" in ProcessingState.FAILED.tooltip
    assert all(state.tooltip for state in ProcessingState)


# -- dependencies ------------------------------------------------------------------------------------------------------
def test_missing_requirements_by_presence_and_version():
    versions = {"torch": "2.13.0+cu128", "transformers": "5.24.1", "medsam3": "0.1.0", "httpx": "0.20"}
    present = {"torch", "transformers", "medsam3_core", "httpx", "scipy", "nibabel", "pydicom", "tqdm", "PIL",
               "safetensors"}
    missing = missing_requirements(False, find_spec=lambda m: object() if m in present else None,
                                   version_of=versions.get)
    assert [r.distribution for r in missing] == ["transformers", "httpx"]  # too new, too old
    remote = missing_requirements(True, find_spec=lambda m: None, version_of=versions.get)
    assert [r.module for r in remote] == ["medsam3_core", "httpx"]  # a remote run needs no torch


def test_install_commands_put_torch_first_and_protect_slicer_packages():
    by_module = {r.module: r for r in REQUIREMENTS}
    missing = [by_module["httpx"], by_module["medsam3_core"], by_module["torch"]]
    commands = install_commands(missing, (12, 9), "/src/medsam3 checkout")
    assert [args for _req, args in commands] == [["torch>=2.4", "--index-url", "https://download.pytorch.org/whl/cu128"],
                        ["--no-deps", "--upgrade", "/src/medsam3 checkout"], ["httpx>=0.27"]]
    assert torch_index_url(None).endswith("/cpu") and torch_index_url((11, 2)).endswith("/cpu")
    assert torch_index_url((13, 1)).endswith("/cu130")


def test_nvidia_cuda_version_parsed_from_nvidia_smi(monkeypatch):
    import subprocess

    from MedicalSAM3SlicerLib import dependencies

    monkeypatch.setattr(dependencies.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    out = "| NVIDIA-SMI 570.1   Driver Version: 570.1   CUDA Version: 12.8     |"
    fake_run = lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=out)  # noqa: E731
    assert nvidia_cuda_version(run=fake_run) == (12, 8)
    monkeypatch.setattr(dependencies.shutil, "which", lambda name: None)
    assert nvidia_cuda_version(run=fake_run) is None


def test_ensure_dependencies_asks_then_installs_in_order(qapp, monkeypatch):
    by_module = {r.module: r for r in REQUIREMENTS}
    monkeypatch.setattr(module, "missing_requirements", lambda remote: [by_module["medsam3_core"], by_module["httpx"]])
    logic = module.MedicalSAM3SlicerLogic()
    monkeypatch.setattr(slicer.util, "confirm_answer", False)
    with pytest.raises(InstallError, match="Nothing was installed"):
        logic.ensureDependencies(remote=True)
    assert [c[0] for c in slicer.calls] == ["confirm"] and "httpx>=0.27" in slicer.calls[0][1]
    slicer.calls.clear()
    monkeypatch.setattr(slicer.util, "confirm_answer", True)
    with pytest.raises(InstallError) as err:  # the stand-in's pip installs nothing: still missing afterwards
        logic.ensureDependencies(remote=True)
    assert err.value.restart_required
    assert [c for c in slicer.calls if c[0] == "pip_install"] == [
        ("pip_install", ["--no-deps", "--upgrade", str(ROOT)]), ("pip_install", ["httpx>=0.27"])]


def test_self_test_class_runs_through_the_standin(qapp):
    """The in-Slicer self-test (phantom, two runs, replace-by-name), here with the thresholding CLI."""
    module.MedicalSAM3SlicerTest().runTest()
    (output,) = slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode")
    assert output.GetSegmentation().GetNumberOfSegments() == 3


@pytest.mark.slow
def test_real_cli_end_to_end_with_the_demo_model(qapp, monkeypatch):
    """One local run through the real ``medsam3_core.volume infer`` child process (demo model, CPU)."""
    from medsam3_core.phantom import make_abdomen_phantom

    monkeypatch.setattr(module.MedicalSAM3SlicerLogic, "cliModule", "medsam3_core.volume")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    ct, _labels, _names = make_abdomen_phantom(seed=2, shape=(8, 40, 32), spacing=(1.5, 1.1, 4.0),
                                               direction=LPS_TO_RAS @ DIRECTION_LPS)
    image = sitk.GetImageFromArray(ct.array)
    image.SetSpacing(ct.spacing)
    image.SetOrigin(ct.origin)
    image.SetDirection(ct.direction.ravel().tolist())
    node = _load_like_slicer(image)
    events = []
    output = module.MedicalSAM3SlicerLogic().process(
        node, None, RunRequest(prompts=["liver", "left kidney"], device="cpu", mode="detect"),
        eventCallback=events.append)
    segmentation = output.GetSegmentation()
    assert [segmentation.GetNthSegment(n).GetName() for n in range(2)] == ["liver", "left kidney"]
    tag = vtk.reference("")
    segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName("liver"))
    assert segment.GetTag(module.SOURCE_TAG, tag) and "demo" in tag.get()
    assert segment.GetTag(module.CONFIDENCE_TAG, tag) and 0.0 <= float(tag.get()) <= 1.0
    labelmap = slicer.vtkOrientedImageData()
    output.GetBinaryLabelmapRepresentation(output.GetSegmentation().GetNthSegmentID(0), labelmap)
    np.testing.assert_allclose(labelmap.ijk_to_ras, module.MedicalSAM3SlicerLogic.ijkToRasArray(node), atol=1e-6)
    stages = {e.stage for e in events if e.kind == "progress"}
    assert {"load", "write"} <= stages and events[-1].kind == "done"
