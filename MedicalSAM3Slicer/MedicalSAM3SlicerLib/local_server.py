"""A private ``medsam3 serve`` child process for local runs, kept warm between runs and stopped with its whole tree.

Why a server and not one CLI process per run: the model loads once and stays warm, torch never enters Slicer's
process (no import cost, no GPU memory held by Slicer, a crash cannot take Slicer down), and local and remote runs
are one program: the module talks to this child exactly as to a remote server, through the core's
``RemoteSegmenter``, so progress, errors, cancel (the server's ``DELETE /v1/jobs/{id}``) and prompt handling are the
same. Only the URL and the key differ.

Safety: the child listens on 127.0.0.1 only, on a free port, and requires a random key that travels in its
environment (not on its command line, which other users of the machine can read). Stopping walks the process tree
with psutil before terminating anything, because Slicer's ``PythonSlicer`` is a launcher whose child is the real
interpreter: the launcher dies at the first signal and would orphan the interpreter if only it were signalled.
psutil terminates and kills on Windows, macOS and Linux alike (no POSIX signal names, which Windows lacks).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

__all__ = ["ServerConfig", "Endpoint", "LocalServer", "WarmServer", "default_python", "free_port"]

_log = logging.getLogger("MedicalSAM3")
_STDERR_TAIL_LINES = 40
#: Module the child runs (``python -m medsam3_core.server`` is ``medsam3 serve``).
SERVER_MODULE = "medsam3_core.server"
API_KEY_ENV = "MEDSAM3_API_KEY"  # read by ``medsam3 serve`` when no --api-key is given


@dataclass(frozen=True)
class ServerConfig:
    """What the local server serves; another config means another server (the old one is stopped)."""

    model: str = "demo"
    device: str = "auto"


@dataclass(frozen=True)
class Endpoint:
    """Where a run goes: a URL and its API key (local child or remote server alike)."""

    url: str
    api_key: Optional[str] = None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the server binds it within a second; a lost race fails fast and
    is retried by :meth:`LocalServer.start`)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def default_python() -> list[str]:
    """Slicer's ``PythonSlicer`` launcher (it sets up Slicer's Python environment), else this interpreter."""
    found = shutil.which("PythonSlicer")
    if found:
        return [found]
    for name in ("PythonSlicer", "PythonSlicer.exe"):
        candidate = Path(sys.executable).with_name(name)
        if candidate.is_file():
            return [str(candidate)]
    return [sys.executable]


class LocalServer:
    """One ``medsam3 serve`` child on 127.0.0.1.

    Args:
        config: model and device to serve.
        python: the interpreter command (``[PythonSlicer]`` in Slicer; a launcher-like wrapper in tests).
        env: the child's environment (Slicer passes its startup environment; the key is added here).
        module: the program run with ``-m`` (tests substitute a stand-in speaking the same HTTP API).
    """

    def __init__(self, config: ServerConfig, python: Sequence[str], env: Optional[Mapping[str, str]] = None,
                 module: str = SERVER_MODULE) -> None:
        self.config, self.python, self.module = config, list(python), module
        self.env = dict(os.environ if env is None else env)
        self.api_key = secrets.token_urlsafe(24)
        self.port = 0
        self.ready = False
        self._proc: Optional[subprocess.Popen] = None
        self._stderr: "collections.deque[str]" = collections.deque(maxlen=_STDERR_TAIL_LINES)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.url, self.api_key)

    @property
    def pid(self) -> Optional[int]:
        return None if self._proc is None else self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        return [*self.python, "-m", self.module, "--host", "127.0.0.1", "--port", str(self.port),
                "--model", self.config.model, "--device", self.config.device]

    def start(self) -> None:
        """Launch the child (returns at once; :meth:`wait_ready` waits for the model to load)."""
        self.port = free_port()
        self._stderr.clear()
        kwargs: dict[str, Any] = {}
        if sys.platform == "win32":
            hidden = subprocess.STARTUPINFO()  # type: ignore[attr-defined]
            hidden.dwFlags |= subprocess.STARTF_USESHOWWINDOW  # type: ignore[attr-defined]
            hidden.wShowWindow = 0  # no console window flashing up over Slicer
            kwargs["startupinfo"] = hidden
        command = self.command()
        _log.info("Starting the local Medical SAM3 server: %s", " ".join(command))
        try:
            self._proc = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                env={**self.env, API_KEY_ENV: self.api_key}, text=True, encoding="utf-8", errors="replace",
                bufsize=1, **kwargs,
            )
        except OSError as err:
            from medsam3_core.errors import RemoteError

            raise RemoteError(f"Could not start the local server '{command[0]}': {err.strerror or err}.") from None
        threading.Thread(target=self._read_stderr, name="MedicalSAM3-server-log", daemon=True).start()

    def wait_ready(self, cancel: Any = None, timeout_s: float = 1800.0, poll_s: float = 0.25) -> dict[str, Any]:
        """Block until the server answers ``/v1/info`` with its key (model loaded and warmed up); returns that
        answer. Raises the core's ``RemoteError`` if the child exits first, ``Cancelled`` when ``cancel`` is set."""
        from medsam3_core.errors import RemoteError
        from medsam3_core.server.client import RemoteSegmenter

        client = RemoteSegmenter(self.url, api_key=self.api_key, timeout=2.0)
        deadline = time.monotonic() + timeout_s
        while True:
            if cancel is not None:
                cancel.raise_if_cancelled()
            if not self.alive:
                raise self.failure("stopped while starting")
            try:
                info = client.check_connection()
            except RemoteError:
                if time.monotonic() > deadline:
                    raise RemoteError(f"The local Medical SAM3 server did not become ready within {timeout_s:.0f} s; "
                                      "see the Python console for its log.") from None
                time.sleep(poll_s)
                continue
            self.ready = True
            return info

    def said(self, text: str) -> bool:
        """Whether the child's recent log contains ``text``."""
        return any(text in line for line in self._stderr)

    def failure(self, what: str) -> Exception:
        """The user's error (the core's ``RemoteError``) for a child that ended: its exit code and last words."""
        from medsam3_core.errors import RemoteError

        code = None if self._proc is None else self._proc.poll()
        last = self._stderr[-1] if self._stderr else ""
        return RemoteError(f"The local Medical SAM3 server {what} (exit code {code}). {last}".strip())

    def stop(self, grace_s: float = 5.0) -> None:
        """End the child and every process below it, on every OS: terminate all, then kill survivors."""
        import psutil

        proc, self._proc, self.ready = self._proc, None, False
        if proc is None:
            return
        try:
            root = psutil.Process(proc.pid)
            tree = [*root.children(recursive=True), root]  # listed first: the launcher dies at the first signal
        except psutil.NoSuchProcess:
            tree = []
        for member in tree:
            try:
                member.terminate()
            except psutil.NoSuchProcess:
                pass
        _gone, alive = psutil.wait_procs(tree, timeout=grace_s)
        for member in alive:
            try:
                member.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=grace_s)
        try:
            proc.wait(timeout=grace_s)  # reap our own child
        except subprocess.TimeoutExpired:
            pass
        # The stderr pipe is left to its reader thread, which ends when the last writer is gone: closing it here
        # would block on the reader's lock for as long as any escaped descendant still holds the pipe.

    def _read_stderr(self) -> None:
        """The child's log goes to Slicer's log: its warnings and errors as warnings, the rest as info."""
        proc = self._proc
        if proc is None or proc.stderr is None:
            return
        try:
            for line in proc.stderr:
                line = line.rstrip()
                if not line:
                    continue
                self._stderr.append(line)
                lowered = line.lower()
                level = logging.WARNING if ("warning" in lowered or "error" in lowered) else logging.INFO
                _log.log(level, "server: %s", line)
        except (OSError, ValueError):  # the pipe broke: the child is gone
            return


class WarmServer:
    """Keeps at most one :class:`LocalServer`: started on first use, reused while the config is the same,
    replaced when it changes, restarted when it died, and stopped by :meth:`stop` (Slicer exits, module reloads).

    :meth:`endpoint` runs on the worker thread of a run; :meth:`stop` on the GUI thread, so both hold a lock.
    """

    def __init__(self, python: Callable[[], Sequence[str]] = default_python,
                 env: Callable[[], Mapping[str, str]] = lambda: dict(os.environ), module: str = SERVER_MODULE,
                 attempts: int = 3) -> None:
        self._python, self._env, self.module, self.attempts = python, env, module, attempts
        self._lock = threading.RLock()
        self.server: Optional[LocalServer] = None
        atexit.register(self.stop)  # also when the host exits without a last word (no aboutToQuit, a script's end)

    def endpoint(self, config: ServerConfig, progress: Optional[Callable[[str, float], None]] = None,
                 cancel: Any = None) -> Endpoint:
        """A ready server for ``config`` (starting it on first use reports the ``server`` stage)."""
        with self._lock:
            server = self.server
            if server is not None and (server.config != config or not server.alive):
                server.stop()
                server = self.server = None
            if server is None:
                server = self.server = LocalServer(config, self._python(), self._env(), self.module)
                server.start()
        if server.ready:
            return server.endpoint
        if progress is not None:
            progress("server", 0.0)
        for attempt in range(self.attempts):
            try:
                server.wait_ready(cancel)
                break
            except Exception:
                port_lost = not server.alive and server.said("Cannot listen")
                if not port_lost or attempt == self.attempts - 1:
                    raise
                with self._lock:  # another program took the free port between our check and its bind: retry
                    server.start()
        if progress is not None:
            progress("server", 1.0)
        return server.endpoint

    def check_alive(self, wait_s: float = 3.0) -> Optional[Exception]:
        """After a lost connection: the error to report if the local server died under the run, else None. Waits
        up to ``wait_s`` for the child to exit, because the connection drops a moment before the exit is seen."""
        server = self.server
        if server is None or server._proc is None:
            return None
        try:
            server._proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            return None
        return server.failure("stopped unexpectedly")

    def stop(self) -> None:
        with self._lock:
            server, self.server = self.server, None
        if server is not None:
            server.stop()
