"""Run an ASGI app with uvicorn in a background thread on 127.0.0.1 and a free port."""

import socket
import threading
import time
from typing import Any

import uvicorn

START_TIMEOUT_SECONDS = 5.0
STOP_TIMEOUT_SECONDS = 5.0


class ThreadedServer:
    """One uvicorn server in a daemon thread. ``start()`` returns its base URL; ``stop()`` is
    bounded in time (requests still running after a second are cancelled)."""

    def __init__(self, app: Any) -> None:
        config = uvicorn.Config(
            app,
            lifespan="off",
            ws="none",
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=1,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Bind a free port, serve in a thread, wait until it accepts connections."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the fake server did not start")
            time.sleep(0.005)
        host, port = sock.getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        """Ask uvicorn to shut down and wait for the thread, at most a few seconds."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_SECONDS)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(STOP_TIMEOUT_SECONDS)
        if self._socket is not None:
            self._socket.close()
