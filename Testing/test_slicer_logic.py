"""The Slicer module's logic, run through the MRML stand-in (Testing/slicer_standin) since Slicer cannot be installed.

The geometry tests are the point: a label map must come back on the very physical points of the input, for an
oblique volume with anisotropic spacing, through every hop (volume node -> core Volume -> HTTP -> local server
child -> label map -> one multi-label import). Local runs start a real child process: a stand-in ``medsam3 serve``
(Testing/slicer_standin/threshold_server.py: the core's real HTTP app and job queue, a thresholding engine) for
speed; test_slicer_server.py runs the real server with the demo model.
"""

import os
import signal
import time
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "Testing" / "slicer_standin"
sys.path[:0] = [str(STANDIN), str(ROOT / "MedicalSAM3Slicer")]

import slicer  # noqa: E402  (the stand-in)
import vtk  # noqa: E402
from MedicalSAM3SlicerLib import (  # noqa: E402
    TERMINOLOGY_TAG,
    Parameters,
    ProcessingState,
    RunRequest,
    ThreadJob,
    connection_work,
    missing_requirements,
    segments_from_labelmap,
    summary_line,
    unique_names,
)
from MedicalSAM3SlicerLib.dependencies import (  # noqa: E402
    REQUIREMENTS,
    InstallError,
    check_platform,
    engine_folder,
    install_missing,
    nvidia_cuda_version,
    torch_index_url,
)
from MedicalSAM3SlicerScene import scene  # noqa: E402

import MedicalSAM3Slicer as module  # noqa: E402
from standin_testing import fresh_scene  # noqa: E402

KEY = "slicer-test-key-0123456789"
LAUNCHER = [sys.executable, str(STANDIN / "launcher.py"), sys.executable]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
# Oblique (rotated 30° about S, then tilted) and anisotropic: any axis or sign mix-up moves points.
_c, _s = np.cos(np.pi / 6), np.sin(np.pi / 6)
DIRECTION_LPS = np.array([[_c, -_s, 0.0], [_s, _c, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1.0, 0.0, 0.0], [0.0, np.cos(0.2), -np.sin(0.2)], [0.0, np.sin(0.2), np.cos(0.2)]])
SPACING = (0.7, 1.3, 3.0)
ORIGIN_LPS = (12.5, -40.0, 100.0)



@pytest.fixture(autouse=True)
def _clean_scene(monkeypatch):
    yield from fresh_scene(monkeypatch, module)


@pytest.fixture
def logic():
    """A logic whose local server child is always stopped, whatever the test did."""
    made = module.MedicalSAM3SlicerLogic()
    yield made
    made.shutdown()


def _tree(pid: int) -> list:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _gone(process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


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
    m = scene.ijkToRasArray(node)
    kji = np.array([[0, 0, 0], [8, 13, 10], [3, 5, 7], [1, 12, 2]])
    ras = (m @ np.c_[kji[:, ::-1], np.ones(len(kji))].T).T[:, :3]
    np.testing.assert_allclose(ras, _ras_of_itk_voxels(image, kji), atol=1e-9)
    assert slicer.util.arrayFromVolume(node).shape == (9, 14, 11)  # [k, j, i]
    # the 9-value SetIJKToRASDirections(ir, jr, kr, ia, ja, ka, is, js, ks) form is row by row, as in Slicer
    other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    other.SetIJKToRASDirections(*(LPS_TO_RAS @ DIRECTION_LPS).ravel())
    other.SetSpacing(SPACING)
    other.SetOrigin(LPS_TO_RAS @ np.array(ORIGIN_LPS))
    np.testing.assert_allclose(scene.ijkToRasArray(other), m)


def test_core_volume_from_slicer_matrix_agrees_with_itk():
    from medsam3_core.io.geometry import Volume

    image = _itk_phantom()
    node = _load_like_slicer(image)
    ijk_to_ras = scene.ijkToRasArray(node)
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


# -- one path: the local server child, started on first use and kept warm --------------------------------------------
def test_local_run_lands_on_the_input_physical_points_through_one_import(logic, caplog):
    image = _itk_phantom()
    node = _load_like_slicer(image)
    imports = slicer.vtkSlicerSegmentationsModuleLogic.imports
    with caplog.at_level("INFO", logger="MedicalSAM3"):
        output = logic.process(node, None, RunRequest(prompts=["bright box", "nothing"], device="cpu"))
    assert slicer.vtkSlicerSegmentationsModuleLogic.imports == imports + 1  # one multi-label import, not one per prompt
    segmentation = output.GetSegmentation()
    assert [segmentation.GetNthSegment(n).GetName() for n in range(2)] == ["bright box", "nothing"]
    box = segmentation.GetSegmentIdBySegmentName("bright box")
    got = _segment_ras_points(output, box)
    expected = _ras_of_itk_voxels(image, np.argwhere(sitk.GetArrayFromImage(image) > 0))
    assert len(got) == 3 * 6 * 4
    np.testing.assert_allclose(_sorted(got), _sorted(expected), atol=1e-6)
    assert len(_segment_ras_points(output, segmentation.GetSegmentIdBySegmentName("nothing"))) == 0
    tag = vtk.reference("")
    assert segmentation.GetSegment(box).GetTag(module.scene.CONFIDENCE_TAG, tag) and float(tag.get()) == 0.8
    assert segmentation.GetSegment(box).GetTag(module.scene.SOURCE_TAG, tag) and tag.get() == "threshold-demo"
    assert segmentation.GetSegment(box).GetTag(TERMINOLOGY_TAG, tag) and tag.get().count("~") == 6
    assert output.closedSurface and output.GetDisplayNode() is not None
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLLabelMapVolumeNode") == []  # the hand-over node is removed
    # the child's warnings reach Slicer's log as warnings, not hidden at DEBUG
    assert any(r.levelname == "WARNING" and "not a model" in r.getMessage() for r in caplog.records)
    # warm: the second run reuses the same child (the model loads once)
    pid = logic.servers.server.pid
    logic.process(node, output, RunRequest(prompts=["bright box"], device="cpu"))
    assert logic.servers.server.pid == pid


def test_existing_segments_with_the_same_name_are_replaced_others_kept(logic):
    node = _load_like_slicer(_itk_phantom())
    output = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    output.CreateDefaultDisplayNodes()
    segmentation = output.GetSegmentation()
    manual = segmentation.AddEmptySegment("", "manual", (0.1, 0.2, 0.3))
    old = segmentation.AddEmptySegment("", "Bright Box", (0.4, 0.5, 0.6))
    assert logic.process(node, output, RunRequest(prompts=["bright box"])) is output
    assert segmentation.GetSegmentIDs() == [manual, old]  # replaced in place: same id, colour kept
    assert segmentation.GetSegment(old).GetColor() == (0.4, 0.5, 0.6)
    assert len(_segment_ras_points(output, old)) == 72


def test_a_new_segmentation_is_placed_under_the_input_study(logic):
    node = _load_like_slicer(_itk_phantom())
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient"), "CT study")
    sh.SetItemParent(sh.GetItemByDataNode(node), study)
    output = logic.process(node, None, RunRequest(prompts=["box"]))
    assert sh.GetItemParent(sh.GetItemByDataNode(output)) == study


def test_bad_requests_fail_before_anything_starts(logic):
    node = _load_like_slicer(_itk_phantom())
    with pytest.raises(ValueError, match="at least one prompt"):
        logic.process(node, None, RunRequest(prompts=[]))
    with pytest.raises(ValueError, match="does not exist"):
        logic.process(node, None, RunRequest(prompts=["liver"], model_source="checkpoint", checkpoint="/no/such"))
    with pytest.raises(ValueError, match="http://host:port"):
        logic.process(node, None, RunRequest(prompts=["liver"], model_source="remote", server_url="gpu:8000"))
    with pytest.raises(ValueError, match="scalar input volume"):
        logic.process(None, None, RunRequest(prompts=["liver"]))
    assert logic.servers.server is None  # nothing was started


def test_non_blocking_run_reports_server_start_then_progress_then_done(qtbot, logic):
    node = _load_like_slicer(_itk_phantom())
    events = []
    assert logic.process(node, None, RunRequest(prompts=["box"]), waitForCompletion=False,
                         eventCallback=events.append) is None
    qtbot.waitUntil(lambda: bool(events) and events[-1].terminal, timeout=120000)
    kinds, stages = [e.kind for e in events], [e.stage for e in events if e.kind == "progress"]
    assert stages[0] == "server" and {"upload", "download"} <= set(stages)
    assert kinds[-2:] == ["importing", "done"], kinds
    assert events[-1].message.startswith("box ") and "model: threshold-demo" in events[-1].message


def _model(tmp_path, behaviour: str) -> RunRequest:
    """A "checkpoint" whose file name tells the stand-in server how to behave."""
    (tmp_path / behaviour).touch()
    return RunRequest(prompts=["box"], model_source="checkpoint", checkpoint=str(tmp_path / behaviour))


def test_cancel_goes_through_the_server_api_and_the_child_stays_warm(qtbot, logic, tmp_path):
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "long")
    slicer.util.updateVolumeFromArray(node, np.ones((30, 8, 8), np.int16))
    events = []
    logic.process(node, None, _model(tmp_path, "slow"), waitForCompletion=False, eventCallback=events.append)
    qtbot.waitUntil(lambda: any(e.stage == "detect" for e in events), timeout=120000)
    logic.cancel()
    qtbot.waitUntil(lambda: bool(events) and events[-1].terminal, timeout=120000)
    assert events[-1].kind == "cancelled"
    last_detect = max(e.fraction for e in events if e.stage == "detect")
    assert last_detect < 1.0  # stopped mid-volume, not after it
    server = logic.servers.server
    assert server.alive  # cancel stops the job, not the warm server
    info = ThreadJob(connection_work(server.url, server.api_key))
    info.start()
    (done,) = [e for e in info.wait() if e.terminal]
    assert done.result["queue"]["running"] == 0  # the server's job really ended
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode") == []  # the scene is unchanged


def test_switching_model_stops_the_old_child_and_closing_stops_the_whole_tree(logic, monkeypatch):
    monkeypatch.setattr(logic, "serverPython", LAUNCHER)  # PythonSlicer-like: the launcher dies, its child would live
    node = _load_like_slicer(_itk_phantom())
    logic.process(node, None, RunRequest(prompts=["box"], device="cpu"))
    first = _tree(logic.servers.server.pid)
    assert len(first) == 2  # launcher + interpreter
    logic.process(node, None, RunRequest(prompts=["box"], device="auto"))  # another config: another server
    assert all(_gone(p) for p in first)
    second = _tree(logic.servers.server.pid)
    slicer.quit()  # Slicer's aboutToQuit
    assert all(_gone(p) for p in second) and logic.servers.server is None


def test_windows_signal_names_a_child_dying_mid_run_fails_the_run_and_clears(logic, monkeypatch, tmp_path):
    """Windows has no SIGKILL: the module must not need it. A child that dies without a word (out of memory, a
    crash) ends the run with its exit code, and the next run starts a new child."""
    monkeypatch.delattr(signal, "SIGKILL", raising=False)
    node = _load_like_slicer(_itk_phantom())
    with pytest.raises(RuntimeError, match="stopped unexpectedly .exit code"):
        logic.process(node, None, _model(tmp_path, "die-in-run"))
    assert logic._job is None
    assert logic.process(node, None, RunRequest(prompts=["box"])) is not None


def test_a_child_that_cannot_start_reports_its_last_words(logic, tmp_path):
    node = _load_like_slicer(_itk_phantom())
    with pytest.raises(RuntimeError, match=r"stopped while starting \(exit code 1\)\. .*DLL load failed"):
        logic.process(node, None, _model(tmp_path, "crash-on-start"))


# -- remote: the same path, another URL and key -----------------------------------------------------------------------
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

    return BackgroundServer(create_app(engine, api_key=KEY))


def test_remote_run_over_http_imports_the_result_on_the_input_grid(qapp):
    """Remote mode is the local path with another URL and key: same client, same prompt resolution."""
    engine = _ThresholdEngine()
    image = _itk_phantom()
    node = _load_like_slicer(image)
    with _serve(engine) as url:
        logic = module.MedicalSAM3SlicerLogic()
        events = []
        request = RunRequest(prompts=["Kidneys", "nothing"], model_source="remote", server_url=url, api_key=KEY,
                             threshold=0.3, window="lung")
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
    assert segmentation.GetNthSegment(0).GetTag(module.scene.SOURCE_TAG, tag) and tag.get() == "threshold-server"


def test_remote_cancel_stops_the_server_job_and_leaves_the_scene_unchanged(qtbot):
    engine = _ThresholdEngine(delay=0.3)
    node = _load_like_slicer(_itk_phantom())
    with _serve(engine) as url:
        logic = module.MedicalSAM3SlicerLogic()
        events = []
        request = RunRequest(prompts=["box"], model_source="remote", server_url=url,
                             api_key=KEY)
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
    from medsam3_core.io.dicom_seg import coded_concept

    labels = np.zeros((2, 3, 4), np.uint8)
    labels[0, 0, :2] = 2
    segments = segments_from_labelmap(labels, ["liver", "Kidneys"],
                                      [{"label": 2, "score": 0.7, "volume_ml": 0.5, "concept": "kidney"}])
    assert [(s.name, s.label, s.voxels, s.score) for s in segments] == [("liver", 1, 0, None), ("Kidneys", 2, 2, 0.7)]
    assert segments[0].color != segments[1].color
    # the codes the DICOM SEG writer uses for the concept the model was asked for, in Slicer's terminology format
    category, kind = coded_concept("kidney")
    assert segments[1].terminology.split("~")[1:3] == [f"{category.scheme}^{category.value}^{category.meaning}",
                                                       f"{kind.scheme}^{kind.value}^{kind.meaning}"]
    assert kind.scheme == "SCT"
    with pytest.raises(ValueError, match=r"labels \[3\]"):
        segments_from_labelmap(np.full((1, 1, 1), 3, np.uint8), ["a", "b"])


def test_duplicate_prompts_get_labels_and_names_of_their_own():
    assert unique_names(["liver", "Liver", "kidney", "liver"]) == ["liver", "Liver 2", "kidney", "liver 3"]
    labels = np.array([[[1, 2, 3, 4]]], np.uint8)
    assert [s.name for s in segments_from_labelmap(labels, ["liver", "Liver", "kidney", "liver"])] == [
        "liver", "Liver 2", "kidney", "liver 3"]


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
    assert params.prompt_list() == ["liver", "Liver", "left   kidney"]  # as CLI arguments: the core resolves them


def test_processing_state_drives_the_button():
    assert ProcessingState.IDLE.button_text == "Segment by text" and not ProcessingState.IDLE.busy
    assert ProcessingState.RUNNING.button_text == "Cancel" and ProcessingState.RUNNING.button_enabled
    assert ProcessingState.STARTING.button_text == "Cancel"
    assert not ProcessingState.CANCELLING.button_enabled and not ProcessingState.IMPORTING.button_enabled
    assert ProcessingState.FAILED.button_text == "Segment by text" and "failed" in ProcessingState.FAILED.tooltip
    assert all(state.tooltip for state in ProcessingState)


# -- dependencies ------------------------------------------------------------------------------------------------------
def test_missing_requirements_by_presence_and_version():
    versions = {"torch": "2.13.0+cu128", "transformers": "6.0.1", "httpx": "0.20"}
    present = {"torch", "transformers", "httpx", "scipy", "nibabel", "pydicom", "tqdm", "PIL", "safetensors",
               "fastapi", "uvicorn", "multipart", "psutil"}
    missing = missing_requirements(False, find_spec=lambda m: object() if m in present else None,
                                   version_of=versions.get)
    assert [r.spec for r in missing] == ["transformers>=5.23,<6", "httpx>=0.27"]  # too new, too old; a range, no pin
    remote = missing_requirements(True, find_spec=lambda m: None, version_of=versions.get)
    assert [r.module for r in remote] == ["httpx"]  # a remote run needs no torch, and the engine is bundled
    assert "medsam3" not in {r.distribution for r in REQUIREMENTS}  # never fetched from a package index


def test_install_torch_from_the_pytorch_extension_else_the_right_wheel_index():
    by_module = {r.module: r for r in REQUIREMENTS}
    missing = [by_module["httpx"], by_module["torch"]]
    calls = []
    install_missing(missing, calls.append, install_torch=lambda spec: calls.append(("PyTorchUtils", spec)))
    assert calls == [("PyTorchUtils", "torch>=2.4"), ["httpx>=0.27"]]
    calls.clear()
    install_missing(missing, calls.append, pip_ensure=lambda specs: calls.append(("pip_ensure", specs)),
                    cuda=lambda: (12, 9))
    assert calls == [["torch>=2.4", "--index-url", "https://download.pytorch.org/whl/cu128"],
                     ("pip_ensure", ["httpx>=0.27"])]
    assert torch_index_url(None).endswith("/cpu") and torch_index_url((11, 2)).endswith("/cpu")
    assert torch_index_url((13, 1)).endswith("/cu130")

    def offline(args):
        raise OSError("network unreachable")

    with pytest.raises(InstallError, match=r"Installing httpx \(talks to a remote .*network unreachable"):
        install_missing([by_module["httpx"]], offline)


def test_old_slicer_and_intel_macs_get_one_clear_sentence():
    with pytest.raises(InstallError, match="Slicer 5.10 or newer .Python 3.10.*Python 3.9"):
        check_platform(True, version=(3, 9))
    with pytest.raises(InstallError, match="Intel Macs.*'Remote server'"):
        check_platform(False, version=(3, 12), system="Darwin", machine="x86_64")
    check_platform(True, version=(3, 12), system="Darwin", machine="x86_64")  # remote mode works there
    check_platform(False, version=(3, 12), system="Darwin", machine="arm64")


def test_the_engine_comes_from_the_extension_or_the_checkout(tmp_path):
    assert engine_folder(str(ROOT / "MedicalSAM3Slicer" / "MedicalSAM3Slicer.py")) == ROOT  # source checkout
    bundled = tmp_path / "qt-scripted-modules"
    (bundled / "medsam3_core").mkdir(parents=True)
    (bundled / "medsam3_core" / "__init__.py").touch()
    assert engine_folder(str(bundled / "MedicalSAM3Slicer.py")) == bundled  # installed extension
    with pytest.raises(InstallError, match="reinstall the extension"):
        engine_folder(str(tmp_path / "elsewhere" / "lib" / "MedicalSAM3Slicer.py"))


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
    monkeypatch.setattr(module, "missing_requirements", lambda remote: [by_module["torch"], by_module["httpx"]])
    logic = module.MedicalSAM3SlicerLogic()
    monkeypatch.setattr(slicer.util, "confirm_answer", False)
    with pytest.raises(InstallError, match="Nothing was installed"):
        logic.ensureDependencies(remote=False)
    assert [c[0] for c in slicer.calls] == ["confirm"] and "httpx>=0.27" in slicer.calls[0][1]
    slicer.calls.clear()
    monkeypatch.setattr(slicer.util, "confirm_answer", True)
    with pytest.raises(InstallError) as err:  # the stand-in's pip installs nothing: still missing afterwards
        logic.ensureDependencies(remote=False)
    assert err.value.restart_required
    pips = [c[1] for c in slicer.calls if c[0] == "pip_install"]
    assert pips[0][0] == "torch>=2.4" and pips[1:] == [["httpx>=0.27"]]
    assert str(ROOT) in sys.path  # the engine is used from the checkout (or the extension), not installed by pip


def test_self_test_class_runs_through_the_standin(qapp):
    """The in-Slicer self-test (phantom, two runs through the warm local server, replace-by-name)."""
    module.MedicalSAM3SlicerTest().runTest()
    (output,) = slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode")
    assert output.GetSegmentation().GetNumberOfSegments() == 3


def test_slicer_installers_use_the_pytorch_extension_and_pydeps_when_present(qapp, monkeypatch):
    import types

    from packaging.requirements import Requirement

    calls = []

    class PyTorchUtilsLogic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None,
                         torchvisionVersionRequirement=None):
            calls.append(("PyTorchUtils", torchVersionRequirement))
            return object()  # the torch module

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=PyTorchUtilsLogic))
    monkeypatch.setattr(slicer.modules, "pytorchutils", object(), raising=False)
    done = []

    def pip_ensure(reqs, requester):
        calls.append(("pip_ensure", reqs, requester))
        done.append(True)

    monkeypatch.setattr(slicer, "pydeps", types.SimpleNamespace(pip_ensure=pip_ensure), raising=False)
    by_module = {r.module: r for r in REQUIREMENTS}
    monkeypatch.setattr(module, "missing_requirements",
                        lambda remote: [] if done else [by_module["torch"], by_module["transformers"]])
    monkeypatch.setattr(slicer.util, "pip_install", lambda args: pytest.fail(f"pip_install {args}"))
    monkeypatch.setattr(slicer.util, "confirm_answer", True)
    module.MedicalSAM3SlicerLogic().ensureDependencies(remote=False)
    assert calls == [("PyTorchUtils", ">=2.4"), ("pip_ensure", [Requirement("transformers>=5.23,<6")], "MedicalSAM3")]
    assert "transformers>=5.23,<6 (SAM3 model classes" in next(c[1] for c in slicer.calls if c[0] == "confirm")


def test_a_port_taken_between_choice_and_bind_is_retried_on_another(logic, monkeypatch):
    import socket

    from MedicalSAM3SlicerLib import local_server

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    ports = [taken.getsockname()[1]]
    real = local_server.free_port
    monkeypatch.setattr(local_server, "free_port", lambda: ports.pop() if ports else real())
    try:
        node = _load_like_slicer(_itk_phantom())
        assert logic.process(node, None, RunRequest(prompts=["box"])) is not None
    finally:
        taken.close()
    assert not ports  # the taken port was tried first, then another one served the run
