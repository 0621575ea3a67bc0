"""Soak: steady streams while followers are dropped at every stage of their start.

Prints one JSON line (diagnostics on stderr). Processes, on 127.0.0.1 and stopped by PID: one
nats-server with JetStream and ``kgents serve`` (demo provider, ``--delay-ms`` between tokens,
SQLite in a temp dir, a tenant on plan ``custom``).

- **Load**: ``--streams`` loops, each posting turns (budget ``whisper``, stream=true) in a
  session of its own for ``--minutes``, moving to a new session every ``--turns-per-session``
  turns; tokens are counted from each turn's ``complete``. Sessions stay short so that the load
  is the same at the end as at the start: a follower replaying a session from its start (or
  from a sequence in it) costs what the session holds, and one session growing for 12 minutes
  would make every late replay dearer than the early ones.
- **Dropped followers**: every ``--burst-seconds`` a burst of ``--burst`` ``GET .../events`` on
  the loops' sessions, each resuming from one of: live, ``?from=start``, ``?after=<a sequence
  in the session>``, ``Last-Event-ID`` past the end; each dropped at one stage of its start:
  ``sent`` (the connection reset 0-5 ms after the request), ``headers`` (after the status
  line), ``first_event``, ``mid`` (after 50-300 ms of reading) or ``stalled`` (reads nothing
  after the headers for 1-3 s, then resets).
- **Baseline and after**: before the load (after a warm-up) and once it stopped, with the
  server idle: asyncio tasks, sessions followed, open followers and private readers of the
  fan-out (``/metrics``), JetStream consumers on ``kgent-events``, and the RSS of ``kgents
  serve``. "After" is read when the follower counts are back to zero (or after 60 s).
- **Flat**: tokens/s and kgents' CPU ms per turn in each window (``--window-seconds``);
  ``last/first`` compares the last full window with the first.

    .venv/bin/python bench/bench_soak.py [--minutes 12] [--streams 16] [--delay-ms 0]
        [--burst 10] [--burst-seconds 2] [--window-seconds 60]
"""

import argparse
import asyncio
import json
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import harness
import httpx
import psutil
from harness import Proc, log, ratio

from kgents.streaming.connection import NatsConnection
from kgents.streaming.topology import EVENTS_STREAM

STAGES = ("sent", "headers", "first_event", "mid", "stalled")
RESUMES = ("live", "from_start", "after", "past_end")
FOLLOWER_SERIES = ("kgents_follow_feeds", "kgents_followers_open", "kgents_follow_private_readers")
QUIET_SECONDS = 60.0


@dataclass
class Load:
    """What the stream loops did, by window."""

    started: float
    window_seconds: float
    turns: Counter[int] = field(default_factory=Counter)
    tokens: Counter[int] = field(default_factory=Counter)
    cpu_at_window: dict[int, float] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    first_seq: dict[str, int] = field(default_factory=dict)
    last_seq: dict[str, int] = field(default_factory=dict)

    def window(self) -> int:
        return int((time.monotonic() - self.started) // self.window_seconds)


async def new_session(api: httpx.AsyncClient, key: str, title: str) -> str:
    response = await api.post(
        "/v1/kgent/sessions", json={"title": title}, headers={"X-API-Key": key}
    )
    response.raise_for_status()
    return str(response.json()["id"])


async def stream_loop(
    api: httpx.AsyncClient,
    key: str,
    sessions: list[str],
    slot: int,
    load: Load,
    until: float,
    turns_per_session: int,
) -> None:
    """Turns in ``sessions[slot]``, replaced by a new session every ``turns_per_session``."""
    headers = {"X-API-Key": key}
    body = {"message": "What should I think about next?", "budget": "whisper"}
    turns = 0
    while time.monotonic() < until:
        if turns == turns_per_session:
            sessions[slot] = await new_session(api, key, f"soak {slot}")
            turns = 0
        session_id = sessions[slot]
        path = f"/v1/kgent/sessions/{session_id}/messages"
        turns += 1
        try:
            async with api.stream("POST", path, json=body, headers=headers) as response:
                if response.status_code != 200:
                    load.errors[f"turn_{response.status_code}"] += 1
                    await response.aread()
                    await asyncio.sleep(0.2)
                    continue
                event_id, event = None, ""
                async for line in response.aiter_lines():
                    if line.startswith("id: "):
                        event_id = int(line[4:])
                        load.first_seq.setdefault(session_id, event_id)
                    elif line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "complete":
                        data = json.loads(line[6:])
                        window = load.window()
                        load.turns[window] += 1
                        load.tokens[window] += int(data.get("tokens_out", 0))
                        if event_id is not None:
                            load.last_seq[session_id] = event_id
                    elif line.startswith("data: ") and event == "error":
                        load.errors["turn_error_event"] += 1
        except httpx.HTTPError as exc:
            load.errors[type(exc).__name__] += 1
            await asyncio.sleep(0.2)


async def dropped_follower(
    host: str, port: int, key: str, session_id: str, load: Load, stage: str, resume: str
) -> str:
    """One follower dropped at ``stage``; what it saw last ("refused 429" etc. when not 200)."""
    query, extra = "", ""
    if resume == "from_start":
        query = "?from=start"
    elif resume == "after":
        first = load.first_seq.get(session_id, 0)
        query = f"?after={random.randint(first, max(first, load.last_seq.get(session_id, 0)))}"
    elif resume == "past_end":
        extra = "Last-Event-ID: 99999999999\r\n"
    request = (
        f"GET /v1/kgent/sessions/{session_id}/events{query} HTTP/1.1\r\nHost: {host}\r\n"
        f"X-API-Key: {key}\r\nAccept: text/event-stream\r\n{extra}\r\n"
    )
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request.encode())
        await writer.drain()
        if stage == "sent":
            await asyncio.sleep(random.uniform(0, 0.005))
            return "sent"
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        if not head.startswith(b"HTTP/1.1 200"):
            return f"refused {head[9:12].decode()}"
        if stage == "headers":
            return "headers"
        if stage == "stalled":
            await asyncio.sleep(random.uniform(1, 3))
            return "stalled"
        if stage == "first_event":
            # A live follower of a session its loop has left sees keep-alives only: give up.
            try:
                async with asyncio.timeout(30):
                    while b"data: " not in await reader.readline():
                        pass
            except TimeoutError:
                return "first_event (none came)"
            return "first_event"
        deadline = time.monotonic() + random.uniform(0.05, 0.3)
        while time.monotonic() < deadline:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                await asyncio.wait_for(reader.read(65536), remaining)
            except TimeoutError:
                break
        return "mid"
    finally:
        writer.transport.abort()  # a reset, as a client that vanished


async def dropper(
    host: str, port: int, key: str, sessions: list[str], load: Load, args: argparse.Namespace
) -> Counter[str]:
    seen: Counter[str] = Counter()
    until = load.started + args.minutes * 60
    tasks: set[asyncio.Task[str]] = set()
    while time.monotonic() < until:
        for _ in range(args.burst):
            stage, resume = random.choice(STAGES), random.choice(RESUMES)
            task = asyncio.create_task(
                dropped_follower(host, port, key, random.choice(sessions), load, stage, resume)
            )
            tasks.add(task)
            seen[f"{stage}/{resume}"] += 1
        await asyncio.sleep(args.burst_seconds)
        done = {task for task in tasks if task.done()}
        tasks -= done
        for task in done:
            if task.exception() is not None:
                load.errors[f"follower_{type(task.exception()).__name__}"] += 1
            elif task.result().startswith("refused"):
                load.errors[f"follower_{task.result()}"] += 1
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in results:
        if isinstance(outcome, BaseException):
            load.errors[f"follower_{type(outcome).__name__}"] += 1
    return seen


async def idle_state(
    api: httpx.AsyncClient, admin: dict[str, str], nats_url: str, proc: Proc
) -> dict[str, Any]:
    """Tasks, fan-out followers, JetStream consumers and memory of the idle server."""
    text = (await api.get("/metrics", headers=admin)).text
    metrics: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in (*FOLLOWER_SERIES, "kgents_asyncio_tasks"):
            metrics[name] = float(value)
    conn = await NatsConnection.connect(nats_url, connect_timeout=5.0)
    try:
        consumers = len(await conn.js.consumers_info(EVENTS_STREAM))
    finally:
        await conn.close()
    rss = psutil.Process(proc.pid).memory_info().rss
    return {
        "asyncio_tasks": metrics.get("kgents_asyncio_tasks"),
        "feeds": metrics.get("kgents_follow_feeds"),
        "followers_open": metrics.get("kgents_followers_open"),
        "private_readers": metrics.get("kgents_follow_private_readers"),
        "jetstream_consumers": consumers,
        "rss_mb": round(rss / 2**20, 1),
    }


async def wait_quiet(
    api: httpx.AsyncClient, admin: dict[str, str], nats_url: str, proc: Proc
) -> tuple[dict[str, Any], float]:
    """The idle state once no follower is left (or after ``QUIET_SECONDS``), and how long
    that took."""
    started = time.monotonic()
    while True:
        state = await idle_state(api, admin, nats_url, proc)
        quiet = not state["followers_open"] and not state["feeds"] and not state["private_readers"]
        if quiet or time.monotonic() - started > QUIET_SECONDS:
            await asyncio.sleep(2)  # let closing tasks and consumer deletes finish
            return await idle_state(api, admin, nats_url, proc), time.monotonic() - started
        await asyncio.sleep(1)


async def run_load(
    api: httpx.AsyncClient,
    kgents: Proc,
    key: str,
    sessions: list[str],
    args: argparse.Namespace,
    *,
    minutes: float,
    drop: bool,
) -> tuple[Load, Counter[str]]:
    load = Load(started=time.monotonic(), window_seconds=args.window_seconds)
    until = load.started + minutes * 60
    cpu_start = kgents.cpu_seconds()

    async def sample_cpu() -> None:
        window = 0
        while time.monotonic() < until + load.window_seconds:
            load.cpu_at_window[window] = kgents.cpu_seconds() - cpu_start
            window += 1
            await asyncio.sleep(
                max(0.0, load.started + window * load.window_seconds - time.monotonic())
            )

    sampler = asyncio.create_task(sample_cpu())
    host, port = kgents.url.removeprefix("http://").split(":")
    loops = [
        stream_loop(api, key, sessions, slot, load, until, args.turns_per_session)
        for slot in range(len(sessions))
    ]
    seen: Counter[str] = Counter()
    if drop:
        dropping = asyncio.create_task(
            dropper(
                host,
                int(port),
                key,
                sessions,
                load,
                argparse.Namespace(**{**vars(args), "minutes": minutes}),
            )
        )
        await asyncio.gather(*loops)
        seen = await dropping
    else:
        await asyncio.gather(*loops)
    load.cpu_at_window[load.window() + 1] = kgents.cpu_seconds() - cpu_start
    sampler.cancel()
    return load, seen


def windows(load: Load, minutes: float) -> list[dict[str, Any]]:
    full = int(minutes * 60 // load.window_seconds)
    rows = []
    for window in range(full):
        turns = load.turns[window]
        cpu = load.cpu_at_window.get(window + 1, 0.0) - load.cpu_at_window.get(window, 0.0)
        rows.append(
            {
                "window": window,
                "turns": turns,
                "tokens_per_s": round(load.tokens[window] / load.window_seconds, 1),
                "cpu_ms_per_turn": round(cpu * 1000 / turns, 1) if turns else None,
            }
        )
    return rows


async def main(args: argparse.Namespace) -> dict[str, Any]:
    admin_token = secrets.token_urlsafe(24)
    admin = {"Authorization": f"Bearer {admin_token}"}
    started = time.monotonic()
    result: dict[str, Any] = {
        "bench": "soak",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": harness.machine(),
        "minutes": args.minutes,
        "streams": args.streams,
        "token_delay_ms": args.delay_ms,
        "turns_per_session": args.turns_per_session,
        "burst": args.burst,
        "burst_seconds": args.burst_seconds,
        "window_seconds": args.window_seconds,
    }
    keep = Path(args.keep_logs) if args.keep_logs else None
    with (
        tempfile.TemporaryDirectory(prefix="kgents-bench-") as tmp,
        harness.processes(Path(tmp), keep_logs=keep) as registry,
    ):
        nats, kgents = harness.start_demo_stack(
            registry, Path(tmp), name="kgents-soak", delay_ms=args.delay_ms, admin_token=admin_token
        )
        key = harness.provision_key(kgents.url, admin_token)
        limits = httpx.Limits(max_connections=args.streams + 8)
        async with httpx.AsyncClient(base_url=kgents.url, limits=limits, timeout=60.0) as api:
            sessions = [await new_session(api, key, f"soak {n}") for n in range(args.streams)]
            log("warm-up")
            await run_load(api, kgents, key, sessions, args, minutes=args.warmup_minutes, drop=True)
            result["baseline"], _ = await wait_quiet(api, admin, nats.url, kgents)
            log(f"baseline {result['baseline']}")
            log(f"soak for {args.minutes} min")
            load, seen = await run_load(
                api, kgents, key, sessions, args, minutes=args.minutes, drop=True
            )
            result["after"], result["quiet_after_s"] = await wait_quiet(
                api, admin, nats.url, kgents
            )
            log(f"after {result['after']}")
        result["followers_dropped"] = sum(seen.values())
        result["followers_by_stage_and_resume"] = dict(sorted(seen.items()))
        result["errors"] = dict(load.errors)
        rows = windows(load, args.minutes)
        result["windows"] = rows
        if len(rows) >= 2:
            first, last = rows[0], rows[-1]
            result["tokens_per_s_last_over_first"] = ratio(
                last["tokens_per_s"], first["tokens_per_s"]
            )
            result["cpu_per_turn_last_over_first"] = ratio(
                last["cpu_ms_per_turn"], first["cpu_ms_per_turn"]
            )
        base, after = result["baseline"], result["after"]
        result["after_minus_baseline"] = {
            name: None
            if base[name] is None or after[name] is None
            else round(after[name] - base[name], 1)
            for name in base
        }
        result["kgents_log"] = harness.log_errors(kgents)
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=12.0, help="length of the soak")
    parser.add_argument("--warmup-minutes", type=float, default=0.5)
    parser.add_argument("--streams", type=int, default=16, help="concurrent turn loops")
    parser.add_argument("--delay-ms", type=int, default=0, help="demo provider token delay")
    parser.add_argument("--turns-per-session", type=int, default=50, help="then a new session")
    parser.add_argument(
        "--burst", type=int, default=10, help="followers dropped per burst (0: none)"
    )
    parser.add_argument("--burst-seconds", type=float, default=2.0, help="time between bursts")
    parser.add_argument("--window-seconds", type=float, default=60.0, help="throughput windows")
    parser.add_argument("--keep-logs", help="copy the servers' logs to this directory")
    return parser.parse_args(argv)


if __name__ == "__main__":
    outcome = asyncio.run(main(parse_args(sys.argv[1:])))
    sys.stdout.write(json.dumps(outcome) + "\n")
