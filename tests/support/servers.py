"""The API as a real HTTP server: uvicorn in a thread, or ``kgents serve`` as a subprocess.

``httpx.ASGITransport`` buffers whole bodies, so SSE timing, disconnects and resume are tested
against these. The subprocess form exists for SIGKILL tests.
"""

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from kgents.api.app import create_app
from kgents.cli.http_server import uvicorn_limits
from kgents.config import Settings
from tests.support.waiting import until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(base_url: str, *, seconds: float = 90.0) -> None:
    def healthy() -> bool:
        try:
            return httpx.get(f"{base_url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    until(healthy, seconds=seconds)


@contextmanager
def server_in_thread(settings: Settings, *, send_buffer_bytes: int | None = None) -> Iterator[str]:
    """Run the app under uvicorn in a background thread; yield its base URL.

    ``send_buffer_bytes`` shrinks the kernel's send buffer of every connection (``SO_SNDBUF``
    on the listening socket), so that a client that stops reading fills it soon."""
    listener = socket.socket()
    if send_buffer_bytes is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        lifespan="on",
        **uvicorn_limits(settings),  # the connection limits of ``kgents serve``
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="uvicorn", daemon=True
    )
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base_url)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


class ServerProcess:
    """``kgents serve`` in a subprocess, configured by environment variables."""

    def __init__(self, data_dir: Path, env: dict[str, str], *, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.env = {**os.environ, **env, "KGENTS_PORT": str(self.port)}
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ServerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "kgents", "serve", "--data-dir", str(self.data_dir)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        try:
            wait_healthy(self.base_url)
        except TimeoutError:
            self.kill()
            raise TimeoutError(self.log_path.read_text()[-3000:]) from None
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
