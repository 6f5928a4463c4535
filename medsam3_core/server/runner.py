"""Running the API with uvicorn: in the foreground for ``medsam3 serve``, in a background thread for tests.

The listening socket is bound here rather than by uvicorn for two reasons: a port that is taken becomes one clear
:class:`~medsam3_core.errors.MedSam3Error` instead of uvicorn's log line and ``sys.exit(1)``, and binding port 0
lets tests (and anyone embedding the server) get a free port from the OS without races.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from typing import Any, Optional

import uvicorn

from medsam3_core.errors import MedSam3Error
from medsam3_core.progress import CancelToken

__all__ = ["bind_socket", "is_loopback", "BackgroundServer", "serve"]


def is_loopback(host: str) -> bool:
    """True for ``localhost``, ``127.x.x.x`` and ``::1`` — addresses no other machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port`` 0 = any free port)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as exc:
        raise MedSam3Error(f"Cannot resolve the address {host!r} to listen on ({exc}).") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise MedSam3Error(
            f"Cannot listen on {host}:{port} ({exc.strerror}); choose another --port or stop the program using it."
        ) from None
    sock.set_inheritable(True)
    return sock


def _config(app: Any, log_level: str, **kwargs: Any) -> uvicorn.Config:
    return uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5, **kwargs)


def serve(
    app: Any,
    sock: socket.socket,
    *,
    ssl_certfile: Optional[str] = None,
    ssl_keyfile: Optional[str] = None,
    log_level: str = "info",
    stop: Optional[CancelToken] = None,
) -> None:
    """Serve ``app`` on an already bound socket (from :func:`bind_socket`) until Ctrl+C / SIGTERM (blocking).

    uvicorn itself shuts down gracefully on SIGINT and SIGTERM while it runs; ``stop`` (set by
    :func:`medsam3_core.signals.cancel_on_signals`) adds what it does not see: SIGHUP, and a signal that arrived
    between the model load and uvicorn installing its own handlers.
    """
    config = _config(app, log_level, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    server = uvicorn.Server(config) if stop is None else _StoppableServer(config, stop)
    server.run(sockets=[sock])


class _StoppableServer(uvicorn.Server):
    """A uvicorn server that also shuts down gracefully once ``stop`` is set (checked on uvicorn's 0.1 s tick)."""

    def __init__(self, config: uvicorn.Config, stop: CancelToken) -> None:
        super().__init__(config)
        self.stop = stop

    async def on_tick(self, counter: int) -> bool:
        return await super().on_tick(counter) or self.stop.cancelled


class BackgroundServer:
    """``with BackgroundServer(app) as url:`` serves ``app`` on a free loopback port in a daemon thread.

    Entering waits (bounded) until uvicorn accepts connections; leaving asks it to stop and waits for the thread,
    so a test never leaves a server behind.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0) -> None:
        self.app, self.host, self.port, self.start_timeout = app, host, port, start_timeout
        self._server: Optional[uvicorn.Server] = None
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> str:
        sock = bind_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        # log_config=None: uvicorn's records go to the embedding program's logging (and pytest's caplog)
        self._server = uvicorn.Server(_config(self.app, "warning", log_config=None))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("the background server did not start")
            time.sleep(0.01)
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def __exit__(self, *_: Any) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=15)
