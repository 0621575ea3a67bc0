"""Fan-out: one session followed by many SSE clients while turns stream. Prints one JSON line.

Processes (127.0.0.1, stopped by PID): a nats-server with JetStream and ``kgents serve`` with
the ``demo`` provider (``KGENTS_DEMO_TOKEN_DELAY_MS``, 10 ms by default: 40 to 120 chunks a
turn). A tenant on plan ``custom`` owns one session.

Each phase opens N followers (``GET /v1/kgent/sessions/{id}/events``, new events only) and waits
until every one got its ``: connected`` comment, so its consumer exists; then it streams
``--turns`` turns one after the other through ``POST .../messages`` (stream=true, the
"producer", itself one more follower). Phases: 1 follower (the baseline), 25, 50, then 100.

Delivery latency of a chunk to a client = the client's wall clock when the bytes of its frame
were read (``time.time()``, all clients in this one asyncio loop) - the ``time`` kgents wrote
into the event's JSON body right before publishing it to JetStream. Both clocks are this
machine's CLOCK_REALTIME. The body is not part of the SSE frame, so after each phase the
benchmark reads every stored message back from JetStream by the sequence the frame carries
(``id:``), which also gives JetStream's own stored timestamp: latency splits into
publish -> stored and stored -> client. The client's own event-loop lag (a 1 ms ticker) is
reported too: it is part of the measured latency and belongs to the client, not the server.

Every follower must see every event of the phase exactly once, in order (``missing``,
``duplicates``, ``out_of_order``).

    .venv/bin/python bench/bench_fanout.py [--followers 1,25,50,100] [--turns 5] [--delay-ms 10]
        [--profile-seconds 8 --profile-out DIR] [--uvloop]
"""

import argparse
import asyncio
import contextlib
import json
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import harness
import httpx
import nats
import psutil
import uvloop
from harness import Proc, log, ratio, summary_ms

STREAM = "kgent-events"
CONNECT_TIMEOUT = 60.0
PHASE_TIMEOUT = 120.0


@dataclass
class Observer:
    """One SSE client: every framed event it read, with the wall-clock time of the read."""

    name: str
    events: list[tuple[int, bytes, float]] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    completes: int = 0
    error: str | None = None


def _frames(buffer: bytearray, data: bytes) -> list[bytes]:
    buffer += data
    end = buffer.rfind(b"\n\n")
    if end < 0:
        return []
    complete = bytes(buffer[:end])
    del buffer[: end + 2]
    return complete.split(b"\n\n")


def _record(observer: Observer, frames: list[bytes], now: float) -> None:
    for frame in frames:
        if frame.startswith(b":"):
            if frame.startswith(b": connected"):
                observer.connected.set()
            continue
        seq: int | None = None
        event = b""
        for line in frame.split(b"\n"):
            if line.startswith(b"id: "):
                seq = int(line[4:])
            elif line.startswith(b"event: "):
                event = line[7:]
        if event == b"complete":
            observer.completes += 1
        if seq is None:
            observer.error = f"event {event.decode()} without id (fallback)"
            continue
        observer.events.append((seq, event, now))


async def follow(base_url: str, session_id: str, key: str, observer: Observer, turns: int) -> None:
    """``GET .../events`` over a plain asyncio connection (HTTP/1.1, chunked body).

    httpx costs several times more CPU per read than the server's own work per event; with 100
    followers in one process that would make the clients, not the server, the bottleneck of a
    2-core machine.
    """
    host, port = base_url.removeprefix("http://").split(":")
    writer: asyncio.StreamWriter | None = None
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            f"GET /v1/kgent/sessions/{session_id}/events HTTP/1.1\r\nHost: {host}\r\n"
            f"X-API-Key: {key}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200" or b"transfer-encoding: chunked" not in head.lower():
            observer.error = f"status {status.decode()}"
            observer.connected.set()
            return
        chunked = ChunkedBody()
        buffer = bytearray()
        while observer.completes < turns:
            data = await reader.read(65536)
            if not data:
                observer.error = "connection closed"
                return
            body = chunked.feed(data)
            _record(observer, _frames(buffer, body), time.time())
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        observer.error = type(exc).__name__
        observer.connected.set()
    finally:
        if writer is not None:
            writer.close()


class ChunkedBody:
    """Decodes an HTTP/1.1 chunked body incrementally: ``feed(raw)`` returns the payload bytes."""

    def __init__(self) -> None:
        self._raw = bytearray()
        self._left = 0  # payload bytes still due in the current chunk
        self._crlf = 0  # CRLF bytes still due after it

    def feed(self, data: bytes) -> bytes:
        self._raw += data
        out = bytearray()
        while self._raw:
            if self._crlf:
                skip = min(self._crlf, len(self._raw))
                del self._raw[:skip]
                self._crlf -= skip
                continue
            if self._left:
                take = min(self._left, len(self._raw))
                out += self._raw[:take]
                del self._raw[:take]
                self._left -= take
                if not self._left:
                    self._crlf = 2
                continue
            end = self._raw.find(b"\r\n")
            if end < 0:
                break
            size = int(bytes(self._raw[:end]).split(b";")[0], 16)
            del self._raw[: end + 2]
            if size == 0:
                break
            self._left = size
        return bytes(out)


async def produce(
    client: httpx.AsyncClient, session_id: str, key: str, message: str, observer: Observer
) -> None:
    url = f"/v1/kgent/sessions/{session_id}/messages"
    body = {"message": message, "stream": True, "budget": "dialogue"}
    buffer = bytearray()
    before = observer.completes
    async with client.stream("POST", url, json=body, headers={"X-API-Key": key}) as response:
        if response.status_code != 200:
            await response.aread()
            observer.error = f"status {response.status_code} {response.text[:120]}"
            return
        async for data in response.aiter_raw():
            _record(observer, _frames(buffer, data), time.time())
            if observer.completes > before:
                return


async def loop_lag(samples: list[float], stop: asyncio.Event) -> None:
    """How late a 1 ms sleep wakes up in this (the clients') event loop."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        planned = loop.time() + 0.001
        await asyncio.sleep(0.001)
        samples.append(max(0.0, loop.time() - planned))


@dataclass
class Stored:
    subject: str
    published: float  # kgents' ``time`` in the body, epoch seconds
    stored: float  # JetStream's timestamp, epoch seconds


async def read_back(nats_url: str, first: int, last: int) -> dict[int, Stored]:
    """Every message of the events stream with a sequence in ``[first, last]``."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        out: dict[int, Stored] = {}
        for seq in range(first, last + 1):
            msg = await js.get_msg(STREAM, seq)
            body = json.loads(msg.data or b"{}")
            published = datetime.fromisoformat(body["time"]).timestamp()
            stored = msg.time.timestamp() if msg.time else published
            out[seq] = Stored(subject=msg.subject or "", published=published, stored=stored)
        return out
    finally:
        await nc.close()


async def last_seq(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(STREAM)
        return int(info.state.last_seq)
    finally:
        await nc.close()


def cpu(procs: dict[str, Proc]) -> dict[str, float]:
    snapshot = {name: proc.cpu_seconds() for name, proc in procs.items()}
    times = psutil.Process().cpu_times()
    snapshot["clients"] = times.user + times.system
    return snapshot


async def phase(
    api: httpx.AsyncClient,
    *,
    base_url: str,
    key: str,
    session_id: str,
    nats_url: str,
    followers: int,
    turns: int,
    procs: dict[str, Proc],
    tag: str,
) -> dict[str, Any]:
    observers = [Observer(f"follower-{i}") for i in range(followers)]
    opening = asyncio.Semaphore(10)  # opening is auth + SQL per request: not the measured part

    async def open_one(observer: Observer) -> None:
        async with opening:
            task = asyncio.create_task(follow(base_url, session_id, key, observer, turns))
            tasks.append(task)
            await observer.connected.wait()

    tasks: list[asyncio.Task[None]] = []
    async with asyncio.timeout(CONNECT_TIMEOUT):
        await asyncio.gather(*(open_one(o) for o in observers))
    failed = [o.error for o in observers if o.error]
    if failed:
        raise RuntimeError(f"followers failed to connect: {failed[:3]}")
    log(f"{tag}: {followers} followers connected")

    first = await last_seq(nats_url) + 1
    producer = Observer("producer")
    lag: list[float] = []
    stop = asyncio.Event()
    ticker = asyncio.create_task(loop_lag(lag, stop))
    before = cpu(procs)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(PHASE_TIMEOUT):
            for turn in range(turns):
                message = f"Fan-out turn {turn} of {tag}: what matters most?"
                await produce(api, session_id, key, message, producer)
            await asyncio.gather(*tasks)
    except TimeoutError:
        log(f"{tag}: timed out waiting for followers")
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, ticker, return_exceptions=True)
    wall = time.perf_counter() - started
    after = cpu(procs)
    last = await last_seq(nats_url)
    stored = await read_back(nats_url, first, last)
    return analyse(observers, producer, stored, lag, wall, {k: after[k] - before[k] for k in after})


def analyse(
    observers: list[Observer],
    producer: Observer,
    stored: dict[int, Stored],
    lag: list[float],
    wall: float,
    cpu_delta: dict[str, float],
) -> dict[str, Any]:
    expected = sorted(stored)
    chunk_seqs = {seq for seq, s in stored.items() if s.subject.endswith(".chunk")}
    latency: list[float] = []
    to_store: list[float] = [stored[seq].stored - stored[seq].published for seq in chunk_seqs]
    from_store: list[float] = []
    missing = duplicates = out_of_order = errors = 0
    for observer in observers:
        seqs = [seq for seq, _, _ in observer.events]
        missing += len(set(expected) - set(seqs))
        duplicates += len(seqs) - len(set(seqs))
        out_of_order += sum(1 for a, b in zip(seqs, seqs[1:], strict=False) if b <= a)
        errors += observer.error is not None
        for seq, event, at in observer.events:
            if event == b"chunk" and seq in chunk_seqs:
                latency.append(at - stored[seq].published)
                from_store.append(at - stored[seq].stored)
    producer_latency = [
        at - stored[seq].published
        for seq, event, at in producer.events
        if event == b"chunk" and seq in chunk_seqs
    ]
    deliveries = len(latency)
    return {
        "followers": len(observers),
        "events": len(expected),
        "chunks": len(chunk_seqs),
        "deliveries": deliveries,
        "deliveries_per_s": round(deliveries / wall, 1) if wall else None,
        "latency_ms": summary_ms(latency),
        "publish_to_stored_ms": summary_ms(to_store),
        "stored_to_client_ms": summary_ms(from_store),
        "producer_stream_latency_ms": summary_ms(producer_latency),
        "client_loop_lag_ms": summary_ms(lag),
        "missing": missing,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "errors": errors + (producer.error is not None),
        "wall_s": round(wall, 2),
        "cpu_s": {name: round(value, 3) for name, value in cpu_delta.items()},
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    admin_token = secrets.token_urlsafe(24)
    started = time.monotonic()
    counts = [int(n) for n in args.followers.split(",")]
    result: dict[str, Any] = {
        "bench": "fanout",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": harness.machine(),
        "provider": "demo",
        "token_delay_ms": args.delay_ms,
        "turns": args.turns,
        "phases": [],
    }
    keep = Path(args.keep_logs) if args.keep_logs else None
    with (
        tempfile.TemporaryDirectory(prefix="kgents-bench-") as tmp,
        harness.processes(Path(tmp), keep_logs=keep) as registry,
    ):
        nats_proc, kgents = harness.start_demo_stack(
            registry,
            Path(tmp),
            name="kgents-fanout",
            delay_ms=args.delay_ms,
            admin_token=admin_token,
        )
        key = harness.provision_key(kgents.url, admin_token)
        procs = {"kgents": kgents, "nats": nats_proc}
        limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
        timeout = httpx.Timeout(PHASE_TIMEOUT, connect=10.0)
        async with httpx.AsyncClient(base_url=kgents.url, limits=limits, timeout=timeout) as api:
            response = await api.post(
                "/v1/kgent/sessions", json={"title": "fan-out"}, headers={"X-API-Key": key}
            )
            response.raise_for_status()
            common: dict[str, Any] = {
                "base_url": kgents.url,
                "key": key,
                "session_id": response.json()["id"],
                "nats_url": nats_proc.url,
                "procs": procs,
            }
            # Warm-up turn with one follower (not counted).
            await phase(api, followers=1, turns=1, tag="warm-up", **common)
            for count in counts:
                measured = await phase(
                    api, followers=count, turns=args.turns, tag=f"{count} followers", **common
                )
                log(f"{count} followers: {json.dumps(measured)}")
                result["phases"].append(measured)
            if args.profile_seconds:
                result["profile"] = await profiled_phase(api, args, kgents, common, Path(tmp))
        result["kgents_log"] = harness.log_errors(kgents)
    result["vs_baseline"], result["targets"] = judge(result["phases"])
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


async def profiled_phase(
    api: httpx.AsyncClient,
    args: argparse.Namespace,
    kgents: Proc,
    common: dict[str, Any],
    workdir: Path,
) -> dict[str, Any]:
    """One more phase with the most followers, under py-spy (its numbers are not reported)."""
    out_dir = Path(args.profile_out) if args.profile_out else workdir
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "kgents-fanout.txt"
    profile = harness.Profile.start(kgents.pid, raw, args.profile_seconds, rate=250)
    try:
        followers = max(int(n) for n in args.followers.split(","))
        turns = args.turns * 4  # outlasts the recording
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.profile_seconds + 2):
                await phase(api, followers=followers, turns=turns, tag="profiled", **common)
        await asyncio.to_thread(profile.finish)
    finally:
        profile.stop()
    if not raw.exists():
        return {"error": "py-spy wrote nothing"}
    return {"file": str(raw), **harness.summarize_profile(raw)}


def judge(phases: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    base = min(phases, key=lambda p: p["followers"])
    most = max(phases, key=lambda p: p["followers"])
    vs = {
        f"{p['followers']}_followers": {
            "latency_p50_ratio": ratio(p["latency_ms"]["p50"], base["latency_ms"]["p50"]),
            "latency_p99_ratio": ratio(p["latency_ms"]["p99"], base["latency_ms"]["p99"]),
        }
        for p in phases
        if p is not base
    }
    p99 = most["latency_ms"]["p99"]
    complete = not any(
        p[k] for p in phases for k in ("missing", "duplicates", "out_of_order", "errors")
    )
    targets = {
        f"latency_p99_ms_{most['followers']}_followers": {
            "target": "< 50",
            "value": p99,
            "met": p99 is not None and p99 < 50,
        },
        "every_event_once_in_order": {
            "target": "0 missing/duplicate/out of order",
            "met": complete,
        },
    }
    return vs, targets


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--followers", default="1,25,50,100", help="phases; the first is the baseline"
    )
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--delay-ms", type=int, default=10, help="demo provider token delay")
    parser.add_argument("--keep-logs", default="", help="copy the servers' logs to this dir")
    parser.add_argument("--profile-seconds", type=int, default=0, help="py-spy, extra phase")
    parser.add_argument("--profile-out", default="", help="directory for the raw py-spy stacks")
    parser.add_argument("--uvloop", action="store_true", help="run the clients on uvloop")
    arguments = parser.parse_args()
    runner = uvloop.run if arguments.uvloop else asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        print(json.dumps(runner(main(arguments)), separators=(",", ":")))
        sys.stdout.flush()
