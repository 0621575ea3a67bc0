"""Streaming overhead: an OpenAI-compatible upstream called directly vs through kgents.

Prints one JSON line (diagnostics on stderr). Processes, all on 127.0.0.1 and stopped by PID:
the fake OpenAI upstream (``python -m tests.fakes openai``, 200 tokens, 5 ms and then 0 ms
between tokens), one nats-server with JetStream, and ``kgents serve`` (provider ``openai``
pointed at the fake, SQLite in a temp dir or with ``--postgres`` a database of its own on an
embedded PostgreSQL, a tenant on plan ``custom``, budget ``dialogue``).

For each upstream delay and each concurrency (1, 16, 64) the two sides run in alternating
rounds, in the same process, against the same upstream:

- ``direct``: ``POST <fake>/v1/chat/completions`` (stream), counting ``data:`` events that
  carry a token;
- ``kgents``: ``POST /v1/kgent/sessions/{id}/messages`` (stream=true), one fresh session per
  stream (created before the round, not timed), counting ``chunk`` events.

- ``litellm`` (with ``--litellm PATH``, a ``litellm`` executable in a venv of its own): the
  LiteLLM proxy (one worker, no database) in front of the same upstream, called as ``direct``.

Tokens are counted, not events: a kgents ``chunk`` event carries every token that arrived
while the turn's previous publish awaited its ack (the fake's tokens are ``w0``, `` w1``...;
each event's first token must be the next one expected). Time to first token (TTFT) is from
just before the request is sent to the arrival of the first token; the token gap is the time
between two consecutive tokens of one stream (0 between tokens of one event), its p99 over all
the streams of a side; total is until the end of the stream (``[DONE]`` / ``complete``).
tokens/s is the tokens received by all streams of a round / the round's wall time. A stream
is an error if its status is not 200, it ends without its end event, carries an ``error``
event, or does not have exactly ``--tokens`` tokens in order. CPU seconds are user+system of
each process, summed over the rounds of each side.

The load generator (this process, ``client`` in the CPU figures) shares the machine with the
servers it measures, so its CPU is theirs lost: by default (``--client aiohttp``) the rounds'
streams go through one aiohttp session, whose C parser reads the chunked bodies for a fraction
of the CPU of httpx (pure-Python h11, ~35-75 us per token); ``--client httpx`` reads them as
earlier runs did. Setup (sessions, provisioning, the request-path probe) uses httpx either way.

    .venv/bin/python bench/bench_streaming.py [--rounds-1 30] [--rounds-16 3] [--rounds-64 3]
        [--delays 5,0] [--workers 1,2,4] [--profile-seconds 20] [--profile-out bench/profiles]
        [--litellm /tmp/litellm-venv/bin/litellm] [--client aiohttp|httpx]

With ``--workers 1,2,4`` each delay runs against ``kgents serve --workers N`` for each N (a
fresh server each, the direct rounds alternating with its rounds as above); every scenario
carries its ``workers``, and CPU seconds of kgents are those of all its processes.
"""

import argparse
import asyncio
import json
import re
import secrets
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import harness
import httpx
import psutil
from harness import Proc, log, ratio, summary_ms

SYSTEM = "You are K-gent, a thoughtful agent who helps people think clearly."
MESSAGE = "How should I plan my week?"
STREAM_TIMEOUT = 120.0


@dataclass
class StreamResult:
    ok: bool
    ttfc: float | None = None
    """Time to the first token."""
    total: float | None = None
    chunks: int = 0
    """Tokens delivered (a kgents ``chunk`` event may carry several)."""
    error: str | None = None
    headers: float | None = None
    """Time until the response's status line and headers arrived."""
    events: int = 0
    """Events that carried tokens (SSE ``chunk`` events, upstream ``data:`` deltas)."""
    gaps: list[float] = field(default_factory=list)
    """Time between each two consecutive tokens (0 between tokens of one event)."""


class TokenClock:
    """Counts the tokens of one stream as they arrive and the gap before each.

    The fake upstream's tokens are ``w0``, `` w1``...: the tokens in an event's text are its
    ``w``s, and its first token must be the next expected one (exactly once, in order)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.started = time.perf_counter()
        self.headers: float | None = None
        """Time until the response's status line and headers arrived."""
        self.first: float | None = None
        self.last: float | None = None
        self.tokens = 0
        self.events = 0
        self.gaps: list[float] = []
        self.disorder: str | None = None

    def arrived(self, text: bytes) -> None:
        now = time.perf_counter()
        count = text.count(b"w")
        if not count:
            return
        if self.disorder is None and not text.lstrip().startswith(b"w%d" % self.tokens):
            self.disorder = f"token {self.tokens} expected, got {text[:20]!r}"
        if self.first is None:
            self.first = now - self.started
        else:
            assert self.last is not None
            self.gaps.append(now - self.last)
        self.gaps.extend([0.0] * (count - 1))
        self.last = now
        self.tokens += count
        self.events += 1

    def result(self) -> StreamResult:
        total = time.perf_counter() - self.started
        error = self.disorder
        if error is None and self.tokens != self.expected:
            error = f"{self.tokens} tokens"
        return StreamResult(
            ok=error is None,
            ttfc=self.first,
            total=total,
            chunks=self.tokens,
            error=error,
            headers=self.headers,
            events=self.events,
            gaps=self.gaps,
        )

    def failed(self, error: str) -> StreamResult:
        return StreamResult(ok=False, chunks=self.tokens, error=error, events=self.events)


@dataclass
class SideStats:
    """All streams of one side (direct or kgents) at one concurrency and upstream delay."""

    results: list[StreamResult] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    chunks: int = 0
    cpu: dict[str, float] = field(default_factory=dict)

    def add_cpu(self, delta: dict[str, float]) -> None:
        for name, value in delta.items():
            self.cpu[name] = self.cpu.get(name, 0.0) + value

    def report(self) -> dict[str, Any]:
        good = [r for r in self.results if r.ok]
        errors = [r.error for r in self.results if not r.ok]
        wall = sum(self.walls)
        chunks_per_s = self.chunks / wall if wall else None
        report: dict[str, Any] = {
            "streams": len(self.results),
            "errors": len(errors),
            "ttft_ms": summary_ms([r.ttfc for r in good if r.ttfc is not None]),
            "headers_ms": summary_ms([r.headers for r in good if r.headers is not None]),
            "total_ms": summary_ms([r.total for r in good if r.total is not None]),
            "token_gap_ms": summary_ms([gap for r in good for gap in r.gaps]),
            "tokens": self.chunks,
            "tokens_per_s": round(chunks_per_s, 1) if chunks_per_s else None,
            "events": sum(r.events for r in self.results),
            "cpu_s": {name: round(value, 3) for name, value in self.cpu.items()},
        }
        if errors:
            kinds: dict[str, int] = {}
            for error in errors:
                kind = re.sub(r"\d+", "N", error or "?")[:120]
                kinds[kind] = kinds.get(kind, 0) + 1
            report["error_kinds"] = kinds
        for server in ("kgents", "litellm", "client"):
            if server in self.cpu and self.chunks:
                per_token = round(1e6 * self.cpu[server] / self.chunks, 1)
                report[f"{server}_cpu_us_per_token"] = per_token
        if self.chunks:
            report["all_cpu_us_per_token"] = round(1e6 * sum(self.cpu.values()) / self.chunks, 1)
        return report


# -- the load generator's clients ---------------------------------------------------------------


@dataclass
class RawResponse:
    """A streamed response as the rounds read it: the status and the body's raw bytes."""

    status: int
    chunks: AsyncIterator[bytes]
    text: Callable[[], Awaitable[str]]


class StreamClient(Protocol):
    def post(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> AbstractAsyncContextManager[RawResponse]: ...


class HttpxStreams:
    """httpx: h11 parses the chunked body in Python."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    @asynccontextmanager
    async def post(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> AsyncIterator[RawResponse]:
        async with self.client.stream("POST", url, json=body, headers=headers) as response:

            async def text() -> str:
                await response.aread()
                return response.text

            yield RawResponse(response.status_code, response.aiter_raw(), text)


class AiohttpStreams:
    """aiohttp: its C parser reads the chunked body."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session

    @asynccontextmanager
    async def post(
        self, url: str, body: dict[str, Any], headers: dict[str, str]
    ) -> AsyncIterator[RawResponse]:
        async with self.session.post(url, json=body, headers=headers) as response:
            yield RawResponse(response.status, response.content.iter_any(), response.text)


STREAM_ERRORS = (httpx.HTTPError, aiohttp.ClientError, OSError)


def httpx_client(base_url: str = "") -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    timeout = httpx.Timeout(STREAM_TIMEOUT, connect=10.0)
    return httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout)


async def load_clients(
    kind: str, stack: AsyncExitStack, api: httpx.AsyncClient
) -> dict[str, StreamClient]:
    """The rounds' stream clients by side: one aiohttp session for all, or with ``httpx`` (as
    before) a client per side, kgents' being ``api``."""
    if kind == "httpx":
        return {
            "direct": HttpxStreams(await stack.enter_async_context(httpx_client())),
            "kgents": HttpxStreams(api),
            "litellm": HttpxStreams(await stack.enter_async_context(httpx_client())),
        }
    connector = aiohttp.TCPConnector(limit=256, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0, sock_read=STREAM_TIMEOUT)
    session = aiohttp.ClientSession(connector=connector, timeout=timeout)
    shared: StreamClient = AiohttpStreams(await stack.enter_async_context(session))
    return dict.fromkeys(("direct", "kgents", "litellm"), shared)


def _frames(buffer: bytearray, data: bytes) -> list[bytes]:
    """Append ``data``; return the complete SSE frames (without the blank line) and keep the
    rest in ``buffer``. Servers here end lines with ``\\n`` only."""
    buffer += data
    end = buffer.rfind(b"\n\n")
    if end < 0:
        return []
    complete = bytes(buffer[:end])
    del buffer[: end + 2]
    return complete.split(b"\n\n")


FrameHandler = Callable[[bytes, TokenClock], StreamResult | None]
"""Reads one SSE frame into the clock; returns the stream's result at its end."""


async def sse_stream(
    client: StreamClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    tokens: int,
    on_frame: FrameHandler,
) -> StreamResult:
    clock = TokenClock(tokens)
    buffer = bytearray()
    try:
        async with client.post(url, body, headers) as response:
            clock.headers = time.perf_counter() - clock.started
            if response.status != 200:
                text = (await response.text())[:120]
                return clock.failed(f"status {response.status} {text}")
            async for data in response.chunks:
                # LiteLLM ends its lines with \r\n.
                for frame in _frames(buffer, data.replace(b"\r\n", b"\n")):
                    result = on_frame(frame, clock)
                    if result is not None:
                        return result
    except STREAM_ERRORS as exc:
        return clock.failed(type(exc).__name__)
    return clock.failed("no end event")


_CONTENT = re.compile(rb'"content":\s*"([^"]*)"')
_CHUNK_TEXT = re.compile(rb'"text":\s*"([^"]*)"')


def _completion_frame(frame: bytes, clock: TokenClock) -> StreamResult | None:
    if frame.startswith(b"data: [DONE]"):
        return clock.result()
    content = _CONTENT.search(frame)
    if content is not None:
        clock.arrived(content.group(1))
    elif frame.startswith(b'data: {"error"'):
        return clock.failed("error event")
    return None


async def direct_stream(
    client: StreamClient,
    url: str,
    tokens: int,
    model: str = "gpt-4o-mini",
    api_key: str = "x",
) -> StreamResult:
    """An OpenAI-compatible streamed completion (the upstream itself, or LiteLLM before it)."""
    body = {
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": MESSAGE}],
        "temperature": 0.4,
        "max_tokens": 4000,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {api_key}"}
    return await sse_stream(client, url, body, headers, tokens, _completion_frame)


_COMPLETE_CHUNKS = re.compile(rb'"chunks":(\d+)')


def _event_of(frame: bytes) -> bytes:
    for line in frame.split(b"\n"):
        if line.startswith(b"event: "):
            return line[7:]
    return b""


def _kgents_frame(frame: bytes, clock: TokenClock) -> StreamResult | None:
    if frame.startswith(b":"):
        return None
    event = _event_of(frame)
    if event == b"chunk":
        text = _CHUNK_TEXT.search(frame)
        clock.arrived(text.group(1) if text else b"")
    elif event == b"complete":
        result = clock.result()
        if not result.ok:
            said = _COMPLETE_CHUNKS.search(frame)
            reported = said.group(1).decode() if said else "?"
            # Without ``id:`` the end event is sse.py's fallback from the
            # turn's outcome, sent when the follower lagged for 3 s.
            origin = "stream" if frame.startswith(b"id: ") else "fallback"
            result.error = f"{result.error}, complete ({origin}) says {reported} chunks"
        return result
    elif event == b"error":
        return clock.failed(frame.decode()[-160:])
    return None


async def kgents_stream(
    client: StreamClient, base_url: str, session_id: str, key: str, tokens: int
) -> StreamResult:
    body = {"message": MESSAGE, "stream": True, "budget": "dialogue"}
    url = f"{base_url}/v1/kgent/sessions/{session_id}/messages"
    return await sse_stream(client, url, body, {"X-API-Key": key}, tokens, _kgents_frame)


async def new_sessions(client: httpx.AsyncClient, key: str, count: int) -> list[str]:
    limit = asyncio.Semaphore(8)

    async def one() -> str:
        async with limit:
            response = await client.post(
                "/v1/kgent/sessions", json={"title": "bench"}, headers={"X-API-Key": key}
            )
            response.raise_for_status()
            return str(response.json()["id"])

    return list(await asyncio.gather(*(one() for _ in range(count))))


# -- rounds ---------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, procs: dict[str, Proc], *, started: float) -> None:
        self.args = args
        self.procs = procs
        self.me = psutil.Process()
        self.started = started
        self.probe: dict[str, Any] | None = None

    def cpu(self) -> dict[str, float]:
        snapshot = {name: proc.cpu_seconds() for name, proc in self.procs.items()}
        times = self.me.cpu_times()
        snapshot["client"] = times.user + times.system
        return snapshot

    def over_deadline(self) -> bool:
        return time.monotonic() - self.started > self.args.deadline

    async def round(
        self,
        stats: SideStats,
        streams: list[Callable[[], Awaitable[StreamResult]]],
        cpu_of: tuple[str, ...],
    ) -> None:
        before = self.cpu()
        started = time.perf_counter()
        async with asyncio.timeout(STREAM_TIMEOUT):
            results = await asyncio.gather(*(stream() for stream in streams))
        wall = time.perf_counter() - started
        after = self.cpu()
        stats.results.extend(results)
        stats.walls.append(wall)
        stats.chunks += sum(r.chunks for r in results)
        stats.add_cpu({name: after[name] - before[name] for name in cpu_of})


async def request_path(api: httpx.AsyncClient, key: str, rounds: int) -> dict[str, Any]:
    """Where the time to the first chunk goes before any token: sequential requests.

    ``get_session``: authentication, rate limit, one read, the ``api.request`` outbox row.
    ``dormant_turn``: a streamed turn with budget ``dormant`` (no model call: one template
    chunk): the whole turn start (SQL, ``user_message`` publish, follower) without a provider.
    """
    headers = {"X-API-Key": key}
    session_id = (await new_sessions(api, key, 1))[0]
    gets: list[float] = []
    for _ in range(rounds):
        started = time.perf_counter()
        response = await api.get(f"/v1/kgent/sessions/{session_id}", headers=headers)
        gets.append(time.perf_counter() - started)
        response.raise_for_status()
    to_headers: list[float] = []
    to_chunk: list[float] = []
    to_end: list[float] = []
    body = {"message": MESSAGE, "stream": True, "budget": "dormant"}
    for _ in range(rounds):
        started = time.perf_counter()
        url = f"/v1/kgent/sessions/{session_id}/messages"
        async with api.stream("POST", url, json=body, headers=headers) as response:
            to_headers.append(time.perf_counter() - started)
            buffer = bytearray()
            async for data in response.aiter_raw():
                events = [_event_of(f) for f in _frames(buffer, data) if not f.startswith(b":")]
                if b"chunk" in events and len(to_chunk) < len(to_headers):
                    to_chunk.append(time.perf_counter() - started)
                if b"complete" in events or b"error" in events:
                    break
        to_end.append(time.perf_counter() - started)
    return {
        "rounds": rounds,
        "get_session_ms": summary_ms(gets),
        "dormant_turn_headers_ms": summary_ms(to_headers),
        "dormant_turn_first_chunk_ms": summary_ms(to_chunk),
        "dormant_turn_complete_ms": summary_ms(to_end),
    }


async def run_delay(
    bench: Bench, kgents: Proc, upstream: Proc, key: str, delay_ms: float, litellm: Proc | None
) -> list[dict[str, Any]]:
    args = bench.args
    tokens = args.tokens
    direct_url = f"{upstream.url}/chat/completions"
    scenarios = []
    async with AsyncExitStack() as stack:
        api = await stack.enter_async_context(httpx_client(kgents.url))
        clients = await load_clients(args.client, stack, api)

        async def kgents_round(stats: SideStats, concurrency: int) -> None:
            sessions = await new_sessions(api, key, concurrency)
            streams = [
                partial(kgents_stream, clients["kgents"], kgents.url, s, key, tokens)
                for s in sessions
            ]
            await bench.round(stats, streams, ("upstream", "nats", "kgents", "client"))

        async def direct_round(stats: SideStats, concurrency: int) -> None:
            streams = [
                partial(direct_stream, clients["direct"], direct_url, tokens)
                for _ in range(concurrency)
            ]
            await bench.round(stats, streams, ("upstream", "client"))

        async def litellm_round(stats: SideStats, concurrency: int) -> None:
            assert litellm is not None
            url = f"{litellm.url}/v1/chat/completions"
            streams = [
                partial(direct_stream, clients["litellm"], url, tokens, LITELLM_MODEL, LITELLM_KEY)
                for _ in range(concurrency)
            ]
            await bench.round(stats, streams, ("upstream", "litellm", "client"))

        sides: dict[str, Callable[[SideStats, int], Awaitable[None]]] = {
            "direct": direct_round,
            "kgents": kgents_round,
        }
        if litellm is not None:
            sides["litellm"] = litellm_round
        # Warm-up (not counted): connections, consumers, SQLite pages, code paths.
        for side in sides.values():
            await side(SideStats(), 4)
        if delay_ms == args.probe_delay:
            bench.probe = await request_path(api, key, args.rounds_1)

        for concurrency, rounds in (
            (1, args.rounds_1),
            (16, args.rounds_16),
            (64, args.rounds_64),
        ):
            stats = {name: SideStats() for name in sides}
            order = list(sides)
            done = 0
            for _ in range(rounds):
                if bench.over_deadline():
                    log(f"deadline: stopping at {done} rounds of concurrency {concurrency}")
                    break
                for name in order:  # alternating: each side goes first in turn
                    await sides[name](stats[name], concurrency)
                order = order[1:] + order[:1]
                done += 1
            if not done:
                continue
            scenario = compare(delay_ms, concurrency, done, stats)
            log(f"delay {delay_ms:g} ms, concurrency {concurrency}: {json.dumps(scenario)}")
            scenarios.append(scenario)
    return scenarios


def compare(
    delay_ms: float, concurrency: int, rounds: int, sides: dict[str, SideStats]
) -> dict[str, Any]:
    reports = {name: stats.report() for name, stats in sides.items()}
    d = reports["direct"]
    scenario: dict[str, Any] = {
        "upstream_delay_ms": delay_ms,
        "concurrency": concurrency,
        "rounds": rounds,
        **reports,
    }
    for name, r in reports.items():
        if name == "direct":
            continue
        overhead = None
        if d["ttft_ms"]["p50"] is not None and r["ttft_ms"]["p50"] is not None:
            overhead = round(r["ttft_ms"]["p50"] - d["ttft_ms"]["p50"], 2)
        scenario[f"{name}_vs_direct"] = {
            "ttft_p50_added_ms": overhead,
            "ttft_p99_ratio": ratio(r["ttft_ms"]["p99"], d["ttft_ms"]["p99"]),
            "token_gap_p99_ratio": ratio(r["token_gap_ms"]["p99"], d["token_gap_ms"]["p99"]),
            "total_p50_ratio": ratio(r["total_ms"]["p50"], d["total_ms"]["p50"]),
            "tokens_per_s_ratio": ratio(r["tokens_per_s"], d["tokens_per_s"]),
        }
    return scenario


async def profile_run(bench: Bench, kgents: Proc, key: str, out_dir: Path) -> dict[str, Any]:
    """py-spy on kgents while 64-stream rounds run back to back (not part of the numbers)."""
    seconds = bench.args.profile_seconds
    raw = out_dir / "kgents-64-streams.txt"
    stats = SideStats()
    async with AsyncExitStack() as stack:
        api = await stack.enter_async_context(httpx_client(kgents.url))
        client = (await load_clients(bench.args.client, stack, api))["kgents"]
        profile = harness.Profile.start(kgents.pid, raw, seconds)
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and profile.proc.poll() is None:
                sessions = await new_sessions(api, key, 64)
                streams = [
                    partial(kgents_stream, client, kgents.url, s, key, bench.args.tokens)
                    for s in sessions
                ]
                await bench.round(stats, streams, ("kgents",))
            err = await asyncio.to_thread(profile.finish)
        finally:
            profile.stop()
    if not raw.exists():
        return {"error": f"py-spy wrote nothing: {err.strip()[-300:]}"}
    summary = harness.summarize_profile(raw)
    summary["file"] = str(raw)
    summary["rounds"] = len(stats.walls)
    summary["errors"] = sum(1 for r in stats.results if not r.ok)
    return summary


async def main(args: argparse.Namespace) -> dict[str, Any]:
    delays = [float(d) for d in args.delays.split(",")]
    worker_counts = [int(w) for w in args.workers.split(",")]
    admin_token = secrets.token_urlsafe(24)
    started = time.monotonic()
    log_errors: dict[str, Any] = {}
    result: dict[str, Any] = {
        "bench": "streaming",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": harness.machine(),
        "tokens": args.tokens,
        "database": "postgresql" if args.postgres else "sqlite",
        "client": args.client,
        "scenarios": [],
    }
    with (
        tempfile.TemporaryDirectory(prefix="kgents-bench-") as tmp,
        harness.processes(Path(tmp), keep_logs=_dir(args.keep_logs)) as registry,
    ):
        workdir = Path(tmp)
        nats = harness.start_nats(registry, workdir / "nats")
        postgres_url = None
        if args.postgres:
            _, postgres_url = harness.start_postgres(registry, workdir)
        for index, (delay, workers) in enumerate([(d, w) for d in delays for w in worker_counts]):
            upstream = harness.start_fake_openai(registry, tokens=args.tokens, delay_ms=delay)
            database = {}
            if postgres_url is not None:
                url = harness.new_database(postgres_url, f"bench_{index}")
                database["KGENTS_DATABASE_URL"] = url
            kgents = harness.start_kgents(
                registry,
                name=f"kgents-{delay:g}ms-{workers}w",
                data_dir=workdir / f"kgents-{delay:g}ms-{workers}w",
                workers=workers,
                env={
                    "KGENTS_LLM_PROVIDER": "openai",
                    "OPENAI_BASE_URL": upstream.url,
                    "OPENAI_API_KEY": "x",
                    "KGENTS_NATS_URL": nats.url,
                    "KGENTS_ADMIN_TOKEN": admin_token,
                    **database,
                },
            )
            key = harness.provision_key(kgents.url, admin_token)
            procs = {"upstream": upstream, "nats": nats, "kgents": kgents}
            litellm = None
            if args.litellm:
                litellm = start_litellm(registry, Path(args.litellm), upstream, workdir)
                procs["litellm"] = litellm
            bench = Bench(args, procs, started=started)
            scenarios = await run_delay(bench, kgents, upstream, key, delay, litellm)
            result["scenarios"] += [{"workers": workers, **s} for s in scenarios]
            if bench.probe is not None:
                result["request_path"] = bench.probe
            if (
                args.profile_seconds
                and (delay, workers) == (delays[0], worker_counts[0])
                and not bench.over_deadline()
            ):
                out_dir = Path(args.profile_out) if args.profile_out else workdir
                out_dir.mkdir(parents=True, exist_ok=True)
                result["profile_64_streams"] = {
                    "upstream_delay_ms": delay,
                    **await profile_run(bench, kgents, key, out_dir),
                }
            log_errors[kgents.name] = harness.log_errors(kgents)
            registry.stop(kgents)
            if litellm is not None:
                registry.stop(litellm)
            registry.stop(upstream)
    result["kgents_log"] = log_errors
    result["wall_s"] = round(time.monotonic() - started, 1)
    result["targets"] = targets(result["scenarios"])
    return result


def _dir(value: str) -> Path | None:
    return Path(value) if value else None


def targets(scenarios: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, for each worker count measured."""

    def find(workers: int, delay: float, concurrency: int) -> dict[str, Any] | None:
        for s in scenarios:
            if (s["workers"], s["upstream_delay_ms"], s["concurrency"]) == (
                workers,
                delay,
                concurrency,
            ):
                return s
        return None

    def check(name: str, scenario: dict[str, Any] | None, value: Any, target: str) -> None:
        if scenario is None or value is None:
            return
        op, bound = target.split()
        met = {"<=": value <= float(bound), "<": value < float(bound), ">=": value >= float(bound)}
        out[name] = {"target": target, "value": value, "met": met[op]}

    out: dict[str, Any] = {}
    for workers in sorted({s["workers"] for s in scenarios}):
        for delay in (5.0, 0.0):
            one = find(workers, delay, 1)
            value = one["kgents_vs_direct"]["ttft_p50_added_ms"] if one else None
            check(f"{workers}w_ttft_p50_added_ms_1_stream_{delay:g}ms", one, value, "<= 10")
        many = find(workers, 5.0, 64)
        value = many["kgents_vs_direct"]["tokens_per_s_ratio"] if many else None
        goal = ">= 0.5" if workers == 1 else ">= 0.8"
        check(f"{workers}w_tokens_per_s_ratio_64x5ms", many, value, goal)
        sixteen = find(workers, 5.0, 16)
        value = sixteen["kgents"]["ttft_ms"]["p99"] if sixteen else None
        check(f"{workers}w_ttft_p99_ms_16_streams", sixteen, value, "< 100")
    sides = ("direct", "kgents", "litellm")
    errors = sum(s[side]["errors"] for s in scenarios for side in sides if side in s)
    out["errors"] = {"target": 0, "value": errors, "met": errors == 0}
    return out


LITELLM_MODEL = "bench-upstream"
LITELLM_KEY = f"sk-{secrets.token_hex(32)}"
LITELLM_CONFIG = """model_list:
  - model_name: {model}
    litellm_params:
      model: openai/gpt-4o-mini
      api_base: {api_base}
      api_key: x
"""


def start_litellm(registry: harness.Processes, binary: Path, upstream: Proc, workdir: Path) -> Proc:
    """The LiteLLM proxy (one worker, no database) in front of ``upstream``."""
    config = workdir / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(model=LITELLM_MODEL, api_base=upstream.url))
    port = harness.free_port()
    argv = [str(binary), "--config", str(config), "--host", harness.HOST, "--port", str(port)]
    argv += ["--num_workers", "1"]
    proc = registry.spawn(
        f"litellm-{port}", argv, env={"LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": LITELLM_KEY}
    )
    proc.url = f"http://{harness.HOST}:{port}"
    deadline = time.monotonic() + 120.0
    while True:
        try:
            if httpx.get(f"{proc.url}/health/liveliness", timeout=2.0).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"litellm did not start: {proc.log_tail()}")
        time.sleep(0.5)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--delays", default="5,0", help="upstream ms between tokens, comma list")
    parser.add_argument("--rounds-1", type=int, default=30, help="sequential turns per side")
    parser.add_argument("--probe-delay", type=float, default=5.0, help="request path probe")
    parser.add_argument("--rounds-16", type=int, default=3)
    parser.add_argument("--rounds-64", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=240.0, help="no new round after (s)")
    parser.add_argument("--profile-seconds", type=float, default=0, help="py-spy at 64 streams")
    parser.add_argument("--profile-out", default="", help="directory for the raw py-spy stacks")
    parser.add_argument("--keep-logs", default="", help="copy the servers' logs to this dir")
    parser.add_argument(
        "--workers", default="1", help="kgents serve --workers, comma list (each a server)"
    )
    parser.add_argument(
        "--postgres", action="store_true", help="embedded PostgreSQL (a database per server)"
    )
    parser.add_argument(
        "--client",
        choices=("aiohttp", "httpx"),
        default="aiohttp",
        help="the load generator's HTTP client for the streams (httpx: as earlier runs)",
    )
    parser.add_argument(
        "--litellm", default="", help="a litellm executable: the LiteLLM proxy as a third side"
    )
    print(json.dumps(asyncio.run(main(parser.parse_args())), separators=(",", ":")))
    sys.stdout.flush()
