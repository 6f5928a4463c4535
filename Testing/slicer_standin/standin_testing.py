"""What every Slicer-module test needs around it: an empty scene, no recorded calls, and local runs served by the
thresholding stand-in server (``threshold_server``), which the child finds through ``PYTHONPATH``."""

import os
from pathlib import Path

import slicer

STANDIN = Path(__file__).resolve().parent
ROOT = STANDIN.parents[1]


def fresh_scene(monkeypatch, module):
    """Generator body of an autouse fixture: ``yield from fresh_scene(monkeypatch, module)``."""
    slicer.mrmlScene.Clear(True)
    slicer.calls.clear()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(STANDIN), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(module.MedicalSAM3SlicerLogic, "serverModule", "threshold_server")
    yield
    slicer.mrmlScene.Clear(True)
