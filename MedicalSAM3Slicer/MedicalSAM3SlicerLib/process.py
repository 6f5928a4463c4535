"""Run the core's command line in a child process and stream its JSON-lines progress back without blocking Qt.

Why a child process: torch and the model stay out of Slicer's own process (no import cost, no GPU memory held after
the run, a crash cannot take Slicer down), and cancelling is a signal, not cooperation. Reader threads push parsed
lines into a queue; the GUI drains it from a ``QTimer`` with :meth:`CliJob.poll`, so no Qt object is touched from a
worker thread.

Cancel first sends SIGINT (the CLI stops after the current batch and exits with code 3, writing nothing); if the
child has not exited after ``grace_s`` the whole process tree is killed. The tree matters: ``PythonSlicer`` is a
launcher that starts the real interpreter as its child, so killing only the launcher would leave the work running.
"""

from __future__ import annotations

import collections
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Mapping, Optional, Sequence

from .events import CANCELLED, ERROR, JobEvent, LOG, parse_event_line

__all__ = ["CliJob", "infer_command", "default_python", "EXIT_OK", "EXIT_USER_ERROR", "EXIT_CANCELLED"]

EXIT_OK, EXIT_USER_ERROR, EXIT_CANCELLED = 0, 2, 3
_STDERR_TAIL_LINES = 40


def infer_command(
    python: str,
    input_path: str,
    prompts: Sequence[str],
    output_dir: str,
    *,
    model: str = "demo",
    device: str = "auto",
    mode: str = "track",
    threshold: Optional[float] = None,
    window: str = "",
    slice_axis: str = "axial",
    cleanup: bool = False,
    modality: str = "",
    extra: Sequence[str] = (),
    module: str = "medsam3_core.volume",
) -> list[str]:
    """Argument list of ``python -m medsam3_core.volume infer`` writing an NRRD label map and JSON-lines progress.

    ``threshold`` ``None`` passes none, so the core uses the model's recommended threshold. ``module`` names another
    program speaking the same protocol (tests use a thresholding stand-in)."""
    cmd = [python, "-m", module, "infer", str(input_path), *prompts, "-o", str(output_dir),
           "--model", model, "--device", device, "--mode", mode,
           *(["--threshold", f"{threshold:g}"] if threshold is not None else []),
           "--slice-axis", slice_axis, "--format", "nrrd", "--progress", "json"]
    if window:
        cmd += ["--window", window]
    if cleanup:
        cmd.append("--cleanup")
    if modality:
        cmd += ["--modality", modality]
    return cmd + list(extra)


class CliJob:
    """One child process speaking the CLI's JSON-lines protocol.

    Use ``start()``, then call ``poll()`` periodically (from the GUI thread) until an event with ``terminal`` set
    arrives; ``cancel()`` may be called at any time from the GUI thread.
    """

    def __init__(self, command: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 cwd: Optional[str] = None, grace_s: float = 5.0) -> None:
        self.command = [str(c) for c in command]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.grace_s = grace_s
        self._queue: "queue.Queue[JobEvent]" = queue.Queue()
        self._stderr: "collections.deque[str]" = collections.deque(maxlen=_STDERR_TAIL_LINES)
        self._proc: Optional[subprocess.Popen] = None
        self._readers: list[threading.Thread] = []
        self._cancel_requested = False
        self._cancel_time = 0.0
        self._finished = False
        self._saw_terminal = False

    # -- lifecycle --------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Launch the child in its own process group/session so the whole tree can be signalled."""
        kwargs: dict = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
            hidden = subprocess.STARTUPINFO()  # type: ignore[attr-defined]
            hidden.dwFlags |= subprocess.STARTF_USESHOWWINDOW  # type: ignore[attr-defined]
            hidden.wShowWindow = 0  # no console window flashing up over Slicer
            kwargs["startupinfo"] = hidden
        else:
            kwargs["start_new_session"] = True
        try:
            self._proc = subprocess.Popen(
                self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, text=True, encoding="utf-8", errors="replace", bufsize=1, **kwargs,
            )
        except OSError as err:
            raise RuntimeError(f"Could not start '{self.command[0]}': {err.strerror or err}.") from err
        self._readers = [
            threading.Thread(target=self._read_stdout, name="MedicalSAM3-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="MedicalSAM3-stderr", daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and not self._finished

    @property
    def returncode(self) -> Optional[int]:
        return None if self._proc is None else self._proc.poll()

    @property
    def stderr_tail(self) -> str:
        return "\n".join(self._stderr)

    def poll(self) -> list[JobEvent]:
        """Events that arrived since the last call; ends with exactly one terminal event once the child is gone."""
        events = self._drain()
        if self._proc is None or self._finished:
            return events
        if self._cancel_requested and self._proc.poll() is None and time.monotonic() - self._cancel_time > self.grace_s:
            self._kill_tree()
        if self._proc.poll() is not None and not any(r.is_alive() for r in self._readers):
            events += self._drain()
            self._finished = True
            if not self._saw_terminal:
                events.append(self._exit_event(self._proc.returncode))
        return events

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> list[JobEvent]:
        """Block until the job ends (scripts, tests, Slicer's batch mode); returns every event. After ``timeout``
        seconds the job is cancelled, and still waited for, so the child never outlives the call."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events: list[JobEvent] = []
        while True:
            events += self.poll()
            if self._finished:
                return events
            if deadline is not None and time.monotonic() > deadline:
                self.cancel()
                deadline = None
            time.sleep(interval)

    def cancel(self) -> None:
        """Ask the child to stop (SIGINT), escalating to killing the process tree after ``grace_s``."""
        if self._proc is None or self._proc.poll() is not None or self._cancel_requested:
            return
        self._cancel_requested = True
        self._cancel_time = time.monotonic()
        if sys.platform == "win32":
            self._kill_tree()  # no SIGINT for a process without a console; stopping at once is the safe choice
            return
        try:
            os.killpg(self._proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    # -- internals --------------------------------------------------------------------------------------------
    def _drain(self) -> list[JobEvent]:
        events = []
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                return events
            self._saw_terminal = self._saw_terminal or event.terminal
            events.append(event)

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip():
                self._queue.put(parse_event_line(line))

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in self._proc.stderr:
            line = line.rstrip()
            if line:
                self._stderr.append(line)
                self._queue.put(JobEvent(LOG, message=line))

    def _exit_event(self, code: int) -> JobEvent:
        """Terminal event for a child that ended without saying how (killed, crashed, or an old CLI)."""
        if self._cancel_requested or code == EXIT_CANCELLED or code in (-signal.SIGINT, -signal.SIGKILL):
            return JobEvent(CANCELLED, message="Cancelled by the user; nothing was changed.")
        last = self._stderr[-1] if self._stderr else ""
        if code == EXIT_OK:
            return JobEvent(ERROR, message="The segmentation process ended without reporting a result.")
        return JobEvent(ERROR, message=f"The segmentation process failed (exit code {code}). {last}".strip())

    def _kill_tree(self) -> None:
        assert self._proc is not None
        if sys.platform == "win32":
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(self._proc.pid)], capture_output=True, check=False)
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def default_python() -> str:
    """Slicer's ``PythonSlicer`` launcher (it sets up Slicer's Python environment), else this interpreter.

    Outside Slicer (tests, scripts) there is no launcher and the current interpreter is the right one.
    """
    found = shutil.which("PythonSlicer")
    if found:
        return found
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        candidate = Path(sys.executable).with_name(name)
        if candidate.is_file():
            return str(candidate)
    return sys.executable
