"""A real nats-server with JetStream for tests, on 127.0.0.1 and a free port.

``running_nats_server(store_dir)`` yields the URL of a server that runs for the block.
``nats_server(store_dir)`` yields the ``NatsServer`` itself, for outage tests: ``kill()`` or
``stop()`` it, then ``start()`` it again on the same port and store (the data survives).
``config`` is the text of a nats-server configuration file (authorization, TLS) given with
``-c``; the flags above still set the address, port and store. Whatever happens, the process is
stopped by its PID when the block ends.

``nats_cluster(base_dir)`` yields a ``NatsCluster``: three servers in one JetStream cluster
(``--cluster``/``--routes``), each with its own store, for R3 streams and leader elections.
"""

import json
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from kgents.streaming.nats_process import find_nats_server, free_port

START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0
HOST = "127.0.0.1"


class NatsServer:
    """One nats-server process (``-js``) with its store in ``store_dir``; port kept across
    restarts."""

    def __init__(
        self,
        store_dir: Path,
        *,
        port: int | None = None,
        config: str | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.store_dir = Path(store_dir)
        self.port = port or free_port(HOST)
        self.config = config
        self.args = list(args)
        """More command-line flags (a cluster's name and routes)."""
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> str:
        """Start the server (again) and wait until it answers with JetStream; return its URL."""
        if self.running:
            return self.url
        self._reap()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config_args: list[str] = []
        if self.config is not None:
            config_path = self.store_dir / "nats.conf"
            config_path.write_text(self.config)
            config_args = ["-c", str(config_path)]
        with (self.store_dir / "nats-server.log").open("ab") as log:
            self._process = subprocess.Popen(
                [
                    str(find_nats_server()),
                    *config_args,
                    "-js",
                    "-a",
                    HOST,
                    "-p",
                    str(self.port),
                    "-sd",
                    str(self.store_dir),
                    *self.args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not _answers_with_jetstream(self.port):
            if not self.running or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nats-server did not start on port {self.port}")
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        """Stop gracefully (SIGTERM, SIGKILL after a timeout) and wait for the process."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._reap()

    def kill(self) -> None:
        """Crash it: SIGKILL, no clean shutdown."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
        self._reap()

    def restart(self) -> str:
        self.stop()
        return self.start()

    def _reap(self) -> None:
        if self._process is not None:
            self._process.wait(STOP_TIMEOUT_SECONDS)
            self._process = None

    def __enter__(self) -> "NatsServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def nats_server(
    store_dir: Path, *, port: int | None = None, config: str | None = None
) -> Iterator[NatsServer]:
    """A started ``NatsServer``, stopped by PID at the end of the block."""
    server = NatsServer(store_dir, port=port, config=config)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@contextmanager
def running_nats_server(store_dir: Path) -> Iterator[str]:
    """The URL of a nats-server with JetStream that runs for the block."""
    with nats_server(store_dir) as server:
        yield server.url


class NatsCluster:
    """``size`` nats-servers with JetStream in one cluster on 127.0.0.1, named ``n0``, ``n1``…;
    each node keeps its client port, cluster port and store across restarts."""

    def __init__(self, base_dir: Path, *, size: int = 3) -> None:
        routes = [free_port(HOST) for _ in range(size)]
        self.nodes: list[NatsServer] = []
        for i, route in enumerate(routes):
            others = ",".join(f"nats://{HOST}:{p}" for j, p in enumerate(routes) if j != i)
            args = ["--name", f"n{i}", "--cluster_name", "kgents-test"]
            args += ["--cluster", f"nats://{HOST}:{route}", "--routes", others]
            self.nodes.append(NatsServer(base_dir / f"n{i}", args=args))

    @property
    def url(self) -> str:
        """Every node's URL, comma separated (``KGENTS_NATS_URL`` takes this form)."""
        return ",".join(node.url for node in self.nodes)

    def node(self, name: str) -> NatsServer:
        """The node whose server name is ``name`` (``n0``…)."""
        return self.nodes[int(name.removeprefix("n"))]

    def start(self) -> None:
        for node in self.nodes:
            node.start()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextmanager
def nats_cluster(base_dir: Path, *, size: int = 3) -> Iterator[NatsCluster]:
    """A started ``NatsCluster``, every node stopped by PID at the end of the block. JetStream
    answers once the nodes have elected a meta leader (``wait_for_stream_replicas`` and the
    streams' own set-up wait for that)."""
    cluster = NatsCluster(base_dir, size=size)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def _answers_with_jetstream(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock, sock.makefile("rb") as f:
            line = f.readline()
    except OSError:
        return False
    if not line.startswith(b"INFO "):
        return False
    try:
        return json.loads(line[5:]).get("jetstream") is True
    except ValueError:
        return False
