"""Ctrl-C, SIGTERM and SIGHUP at every stage of ``infer``, ``serve`` and training, in real subprocesses.

Each run goes through ``stage_pause.py``, which stops the program at a named stage (model loading, detection,
writing, training data, a training step) and tells the test so on stderr; the test sends its signal(s) there, then
lets the program go on. No test depends on how long anything takes.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from medsam3_core.errors import Cancelled
from medsam3_core.progress import CancelToken
from medsam3_core.signals import cancel_on_signals

REPO = Path(__file__).resolve().parents[1]
STAGE_PAUSE = Path(__file__).resolve().parent / "stage_pause.py"
KEY = "signals-test-key-0123456789"
INT, TERM, HUP = signal.SIGINT, signal.SIGTERM, signal.SIGHUP
_STARTUP_LIMIT_S = 300  # a bound on waiting for a subprocess to reach a stage, not an expectation of speed


class Program:
    """A subprocess whose stderr is collected line by line, so the test can wait for a marker in it."""

    def __init__(self, args: list[str], **kwargs) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MEDSAM3_API_KEY": KEY}
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, **kwargs)
        self.lines: list[str] = []
        self._new: "queue.Queue[str]" = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            self._new.put(line)

    def wait_for(self, pattern: str) -> re.Match:
        deadline = time.monotonic() + _STARTUP_LIMIT_S
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                match = re.search(pattern, self._new.get(timeout=1))
            except queue.Empty:
                continue
            if match:
                return match
        self.proc.kill()
        raise AssertionError(f"never reached {pattern!r}:\n{self.stderr}")

    def finish(self) -> int:
        try:
            code = self.proc.wait(timeout=_STARTUP_LIMIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"did not stop after the signal:\n{self.stderr}") from None
        self._reader.join(timeout=30)  # the pipe closes with the process: every line is in self.lines now
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


def _paused(stage: str, go: Path, *module_args: str) -> Program:
    return Program([sys.executable, str(STAGE_PAUSE), stage, str(go), *module_args])


def _interrupt_at(program: Program, stage: str, go: Path, signals: tuple[int, ...]) -> int:
    program.wait_for(f"PAUSED {stage}$")  # not anchored: a progress bar may share the line
    for signum in signals:
        program.proc.send_signal(signum)
    go.touch()
    return program.finish()


@pytest.fixture(scope="module")
def scan(tmp_path_factory) -> Path:
    from medsam3_core.io.reading import write_volume
    from medsam3_core.phantom import make_abdomen_phantom

    path = tmp_path_factory.mktemp("scan") / "scan.nii.gz"
    write_volume(make_abdomen_phantom(0, (4, 40, 48), (2.0, 2.0, 5.0))[0], path)
    return path


def _infer_args(scan: Path, out: Path, *extra: str) -> list[str]:
    return ["medsam3_core.volume", "infer", str(scan), "liver", "kidney", "-o", str(out), "--device", "cpu",
            "--mode", "detect", "--batch-size", "1", "--per-segment", "--progress", "none", *extra]


# -- infer ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    "stage, signals",
    [("load", (HUP,)), ("detect", (TERM,)), ("write", (INT,)), ("write", (HUP,)), ("write", (INT, TERM))],
    ids=["load-HUP", "detect-TERM", "write-INT", "write-HUP", "write-second-signal-aborts"],
)
def test_infer_cancels_at_every_stage_with_exit_3_and_writes_nothing(tmp_path, scan, stage, signals):
    out, go = tmp_path / "out", tmp_path / "go"
    program = _paused(stage, go, *_infer_args(scan, out))
    code = _interrupt_at(program, stage, go, signals)
    assert code == 3, program.stderr
    assert not out.exists(), f"files were written: {list(out.rglob('*'))}"
    assert "Traceback" not in program.stderr
    if stage == "load" or len(signals) == 2:  # loading stops at once, and a second signal does not wait either
        assert f"RESUMED {stage}" not in program.stderr


# -- the remote client ---------------------------------------------------------------------------------------------
class _RunsUntilCancelled:
    """A server-side segmenter stand-in that holds its job until it is cancelled (bounded), like a long GPU run."""

    def __init__(self) -> None:
        self.started = threading.Event()

    def segment(self, volume, prompts, options=None, progress=None, cancel=None, concepts=None):
        self.started.set()
        deadline = time.monotonic() + _STARTUP_LIMIT_S
        while time.monotonic() < deadline:
            cancel.raise_if_cancelled()
            time.sleep(0.01)
        raise AssertionError("the job was never cancelled")


@pytest.mark.slow
def test_remote_client_stopped_by_sigterm_cancels_its_server_job(tmp_path, scan):
    from medsam3_core.server.app import create_app
    from medsam3_core.server.runner import BackgroundServer

    segmenter = _RunsUntilCancelled()
    app = create_app(segmenter, api_key=KEY)
    jobs = app.state.jobs
    with BackgroundServer(app) as url:
        program = Program([sys.executable, "-m", *_infer_args(scan, tmp_path / "out", "--server", url)])
        assert segmenter.started.wait(_STARTUP_LIMIT_S), program.stderr
        program.proc.send_signal(TERM)
        assert program.finish() == 3, program.stderr
        deadline = time.monotonic() + _STARTUP_LIMIT_S
        while jobs.stats()["cancelled"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert jobs.stats()["cancelled"] == 1 and jobs.stats()["running"] == 0
    assert not (tmp_path / "out").exists()


# -- serve ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_serve_stops_at_once_when_signalled_while_loading(tmp_path):
    go = tmp_path / "go"
    program = _paused("load", go, "medsam3_core.server", "--model", "demo", "--device", "cpu", "--port", "0")
    assert _interrupt_at(program, "load", go, (TERM,)) == 3, program.stderr
    assert "did not start" in program.stderr and "RESUMED load" not in program.stderr
    assert "ready at" not in program.stderr


@pytest.mark.slow
def test_serving_server_stops_cleanly_when_its_terminal_closes():
    """Once it serves, a signal is the server's normal stop (exit 0, as for Ctrl-C), SIGHUP included."""
    program = Program([sys.executable, "-m", "medsam3_core.server", "--model", "demo", "--device", "cpu",
                       "--port", "0"])
    program.wait_for(r"ready at http://127\.0\.0\.1:\d+")
    program.proc.send_signal(HUP)
    assert program.finish() == 0, program.stderr
    assert "Traceback" not in program.stderr


# -- training ------------------------------------------------------------------------------------------------------
@pytest.fixture()
def train_config(tmp_path) -> Path:
    from test_training_engine import _blob_folder, _config, _random_square

    (tmp_path / "blobs").mkdir()
    data = _blob_folder(tmp_path / "blobs", "b", 8, (56, 56), 0, _random_square)
    cfg = _config(data, tmp_path / "run", max_steps=4)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    return path


@pytest.mark.slow
def test_training_signal_writes_a_checkpoint_then_exits_3(tmp_path, train_config):
    go = tmp_path / "go"
    program = _paused("train-step", go, "training.run", "--config", str(train_config))
    assert _interrupt_at(program, "train-step", go, (TERM,)) == 3, program.stderr
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["state"]
    assert state["step"] == 2, "the step in progress when the signal came (the second) finishes and is checkpointed"
    assert "the same command resumes it" in program.stderr.splitlines()[-1]
    assert not (tmp_path / "run" / "final").exists() and "Traceback" not in program.stderr


@pytest.mark.slow
def test_training_signal_while_reading_data_stops_at_once(tmp_path, train_config):
    go = tmp_path / "go"
    program = _paused("train-data", go, "training.run", "--config", str(train_config))
    assert _interrupt_at(program, "train-data", go, (HUP,)) == 3, program.stderr
    assert "RESUMED train-data" not in program.stderr and "Traceback" not in program.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


# -- the mechanism in-process --------------------------------------------------------------------------------------
def test_handlers_are_restored_and_a_signal_only_sets_the_token():
    before = signal.getsignal(signal.SIGTERM)
    with cancel_on_signals() as signals:
        signal.raise_signal(signal.SIGTERM)
        assert signals.token.cancelled and signals.signal_name == "SIGTERM"
        with pytest.raises(Cancelled):
            with signals.immediately():
                pass  # entering an immediate region after a signal raises at once
    assert signal.getsignal(signal.SIGTERM) is before


def test_signal_inside_an_immediate_region_raises_cancelled_at_once():
    token = CancelToken()
    reached = []
    with cancel_on_signals(token) as signals:
        with pytest.raises(Cancelled, match="SIGHUP"):
            with signals.immediately():
                signal.raise_signal(signal.SIGHUP)
                reached.append("after")
    assert token.cancelled and not reached
