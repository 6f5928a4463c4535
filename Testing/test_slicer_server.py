"""The module's local server for real: ``python -m medsam3_core.server`` with the demo model on the CPU, started and
stopped by the module's logic behind a launcher-like parent (as ``PythonSlicer`` is), through the Slicer stand-in.

Slicer and the command line must give the same label map for the same prompts, duplicates and synonyms included,
because both resolve prompts with the core and run the same engine; cancel must end the server's job (the warm
server stays); closing must end the whole process tree.
"""

import os
import subprocess
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
from MedicalSAM3SlicerLib import RunRequest, ThreadJob, connection_work  # noqa: E402

import MedicalSAM3Slicer as module  # noqa: E402

pytestmark = pytest.mark.slow
LAUNCHER = [sys.executable, str(STANDIN / "launcher.py"), sys.executable]
PROMPTS = ["liver", "Liver", "hepatic", "kidneys", "liver"]  # duplicates, case and a synonym


@pytest.fixture(scope="module")
def logic():
    """One logic for the module: the demo model loads once in its child and stays warm across the tests."""
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    made = module.MedicalSAM3SlicerLogic()
    made.serverPython = LAUNCHER
    yield made
    made.shutdown()


def _phantom_file(path: Path, shape=(8, 40, 32)) -> Path:
    from medsam3_core.phantom import make_abdomen_phantom

    ct, _labels, _names = make_abdomen_phantom(seed=2, shape=shape, spacing=(1.5, 1.1, 4.0))
    image = sitk.GetImageFromArray(ct.array)
    image.SetSpacing(ct.spacing)
    image.SetOrigin(ct.origin)
    image.SetDirection(ct.direction.ravel().tolist())
    sitk.WriteImage(image, str(path))
    return path


def _load(path: Path):
    """What Slicer's reader does with an ITK image: same voxels, geometry flipped from LPS to RAS."""
    image = sitk.ReadImage(str(path))
    flip = np.diag([-1.0, -1.0, 1.0])
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
    slicer.util.updateVolumeFromArray(node, sitk.GetArrayFromImage(image))
    node.SetSpacing(image.GetSpacing())
    node.SetOrigin(flip @ np.array(image.GetOrigin()))
    node.SetIJKToRASDirections(flip @ np.array(image.GetDirection()).reshape(3, 3))
    return node


def test_slicer_and_the_command_line_give_the_same_label_map(logic, tmp_path):
    path = _phantom_file(tmp_path / "ct.nrrd")
    cli = subprocess.run(
        [sys.executable, "-m", "medsam3_core.volume", "infer", str(path), *PROMPTS, "-o", str(tmp_path / "cli"),
         "--model", "demo", "--device", "cpu", "--mode", "detect", "--threshold", "0", "--format", "nrrd"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert cli.returncode == 0, cli.stderr[-2000:]
    expected = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli" / "labels.nrrd")))

    node = _load(path)
    output = logic.process(node, None, RunRequest(prompts=PROMPTS, device="cpu", mode="detect", threshold=0.0))
    segmentation = output.GetSegmentation()
    assert [segmentation.GetNthSegment(n).GetName() for n in range(5)] == [
        "liver", "Liver 2", "hepatic", "kidneys", "liver 3"]
    got = np.zeros(expected.shape, np.uint8)
    for label in range(1, 6):
        got[slicer.util.arrayFromSegmentBinaryLabelmap(output, segmentation.GetNthSegmentID(label - 1)) > 0] = label
    assert expected.any()
    np.testing.assert_array_equal(got, expected)

    pid = logic.servers.server.pid
    logic.process(node, output, RunRequest(prompts=["liver"], device="cpu", mode="detect"))
    assert logic.servers.server.pid == pid  # warm: the model was loaded once


def test_cancel_ends_the_server_job_and_close_ends_the_process_tree(qtbot, logic, tmp_path):
    slicer.mrmlScene.Clear(True)
    node = _load(_phantom_file(tmp_path / "long.nrrd", shape=(48, 64, 64)))
    events = []
    logic.process(node, None, RunRequest(prompts=["liver", "kidney"], device="cpu", mode="track"),
                  waitForCompletion=False, eventCallback=events.append)
    engine_stages = ("encode", "detect", "track", "fuse")
    qtbot.waitUntil(lambda: any(e.stage in engine_stages for e in events), timeout=600000)
    logic.cancel()
    qtbot.waitUntil(lambda: bool(events) and events[-1].terminal, timeout=120000)
    assert events[-1].kind == "cancelled", events[-1]
    server = logic.servers.server
    job = ThreadJob(connection_work(server.url, server.api_key))
    job.start()
    (info,) = [e for e in job.wait() if e.terminal]
    assert info.result["queue"]["running"] == 0 and info.result["queue"]["queued"] == 0
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode") == []

    root = psutil.Process(server.pid)
    tree = [root, *root.children(recursive=True)]
    assert len(tree) >= 2  # the launcher and the interpreter it started
    logic.shutdown()
    for process in tree:
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
