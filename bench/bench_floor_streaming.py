"""The floor under the 64-stream target: what the fixed streaming design costs without kgents.

Prints one JSON line (diagnostics on stderr). Processes, all on 127.0.0.1 and stopped by PID:
the fake OpenAI upstream (``python -m tests.fakes openai``, ``--tokens`` tokens ``--delay-ms``
apart), one nats-server with JetStream (file store), and ``pass-through``: this file run with
``--serve``, a raw ASGI app under uvicorn (uvloop, httptools, as ``kgents serve``) with nats-py
and nothing of kgents (no database, no FastAPI, no middleware, no authentication).

Per request the pass-through does what issue 4 fixes and nothing more:

1. opens an ordered consumer (nats-py push ``ordered_consumer``, deliver new, callback into a
   list) on ``kgent.session.<id>.>`` of a ``kgent-events`` stream configured as kgents' (file
   storage, 2-minute duplicate window), before anything is published;
2. reads the upstream's SSE body (``--upstream-client raw``: one asyncio connection per
   request with its own chunked-encoding and SSE splitter; ``httpx``: a shared
   ``httpx.AsyncClient``, ``aiter_raw``), ``json.loads`` each event's data and takes
   ``choices[0].delta.content``;
3. publishes each non-empty delta as it comes, one JetStream message on
   ``kgent.session.<id>.chunk`` with ``Nats-Msg-Id: <turn_id>:<index>``, asynchronously (core
   publish with a reply subject per message; one wildcard subscription counts the acks; at most
   256 outstanding, then it waits for half), no coalescing; then an end message on
   ``kgent.session.<id>.end`` and waits for every ack;
4. writes one SSE frame per delivered message (``id: <stream seq>``, ``event: chunk``,
   ``data: <payload>``), every frame already delivered in one ASGI ``send``, until the end
   message, which becomes ``event: complete``.

The benchmark process alternates rounds of ``direct`` (the upstream called as by
``bench_streaming.py``, with its ``--client``) and ``pass-through`` (the same client code as
``bench_streaming.py``'s kgents side: it counts ``chunk`` events until ``complete``), at each
``--concurrency``, and reports chunks/s (chunks of a round / its wall time), the ratio, and
the CPU of every process (user + system, psutil), as µs per chunk and as cores used during
the rounds.

    .venv/bin/python bench/bench_floor_streaming.py [--concurrency 64] [--rounds 3]
        [--tokens 200] [--delay-ms 5] [--upstream-client raw|httpx] [--profile-seconds 0]
        [--client aiohttp|httpx]
"""

import argparse
import asyncio
import json
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import harness
import httpx
from bench_streaming import (
    Bench,
    SideStats,
    direct_stream,
    httpx_client,
    kgents_stream,
    load_clients,
)
from harness import Proc, log, ratio

STREAM_TIMEOUT = 120.0
ACK_WINDOW = 256

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# -- the pass-through server (``--serve``) ------------------------------------------------------


class RawUpstream:
    """``POST`` the chat request on a fresh connection; yield the data of each SSE event."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.path = f"{parts.path.rstrip('/')}/chat/completions"

    async def events(self, body: bytes) -> Any:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            head = (
                f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                "Authorization: Bearer x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            writer.write(head + body)
            header = await reader.readuntil(b"\r\n\r\n")
            if not header.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"upstream: {header[:40]!r}")
            chunked = b"transfer-encoding: chunked" in header.lower()
            body_buf = b""  # de-chunked body not yet split into events
            raw = b""  # bytes as read, not yet de-chunked
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                if chunked:
                    raw += data
                    while True:
                        line_end = raw.find(b"\r\n")
                        if line_end < 0:
                            break
                        size = int(raw[:line_end].split(b";", 1)[0], 16)
                        if size == 0:
                            raw = b""
                            break
                        if len(raw) < line_end + 2 + size + 2:
                            break
                        body_buf += raw[line_end + 2 : line_end + 2 + size]
                        raw = raw[line_end + 4 + size :]
                else:
                    body_buf += data
                *events, body_buf = body_buf.split(b"\n\n")
                for data_line in _data_lines(events):
                    if data_line is None:
                        return
                    yield data_line
        finally:
            writer.close()


class HttpxUpstream:
    """The same with a shared ``httpx.AsyncClient`` (connection pool, ``aiter_raw``)."""

    def __init__(self, base_url: str) -> None:
        self.url = f"{base_url.rstrip('/')}/chat/completions"
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        self.client = httpx.AsyncClient(limits=limits, timeout=STREAM_TIMEOUT)

    async def events(self, body: bytes) -> Any:
        headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
        async with self.client.stream("POST", self.url, content=body, headers=headers) as response:
            if response.status_code != 200:
                raise RuntimeError(f"upstream: {response.status_code}")
            buffer = b""
            async for data in response.aiter_raw():
                *events, buffer = (buffer + data).split(b"\n\n")
                for data_line in _data_lines(events):
                    if data_line is None:
                        return
                    yield data_line


def _data_lines(events: list[bytes]) -> Iterator[bytes | None]:
    """The data of each complete SSE event in ``events``; ``None`` for ``[DONE]``."""
    for event in events:
        for line in event.split(b"\n"):
            if line.startswith(b"data: "):
                yield None if line == b"data: [DONE]" else line[6:]


class AckCounter:
    """One wildcard subscription for the acks of all pipelined publishes (as kgents does)."""

    def __init__(self, nc: Any) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self.turns: dict[str, Turn] = {}

    async def start(self) -> None:
        await self.nc.subscribe(f"{self.prefix}.*.*", cb=self.on_ack)

    async def on_ack(self, msg: Any) -> None:
        _, turn_key, _ = msg.subject.rsplit(".", 2)
        turn = self.turns.get(turn_key)
        if turn is not None:
            if b'"error"' in msg.data:
                turn.failed = msg.data.decode()
            turn.acked += 1
            if turn.waiter is not None and turn.acked >= turn.target and not turn.waiter.done():
                turn.waiter.set_result(None)


class Turn:
    def __init__(self, key: str) -> None:
        self.key = key
        self.sent = 0
        self.acked = 0
        self.target = 0
        self.failed: str | None = None
        self.waiter: asyncio.Future[None] | None = None

    async def wait_acks(self, target: int) -> None:
        if self.acked >= target:
            return
        self.target = target
        self.waiter = asyncio.get_running_loop().create_future()
        async with asyncio.timeout(5.0):
            await self.waiter
        self.waiter = None


class PassThrough:
    """The raw ASGI app: upstream SSE → JetStream (one message per chunk) → ordered consumer →
    SSE."""

    def __init__(self, nats_url: str, upstream: RawUpstream | HttpxUpstream) -> None:
        self.nats_url = nats_url
        self.upstream = upstream
        self.nc: Any = None
        self.js: Any = None
        self.acks: AckCounter | None = None
        self.turn_count = 0

    async def startup(self) -> None:
        import nats
        from nats.js import api

        self.nc = await nats.connect(self.nats_url)
        self.js = self.nc.jetstream()
        config = api.StreamConfig(
            name="kgent-events",
            subjects=["kgent.session.>"],
            storage=api.StorageType.FILE,
            max_msgs_per_subject=10_000,
            duplicate_window=120.0,
        )
        try:
            await self.js.add_stream(config)
        except Exception:  # already there from a previous server in this run
            await self.js.update_stream(config)
        self.acks = AckCounter(self.nc)
        await self.acks.start()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await self.startup()
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if self.nc is not None:
                        await self.nc.drain()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":  # readiness probe
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        # /v1/kgent/sessions/<id>/messages, as the kgents client of bench_streaming.py posts
        session_id = scope["path"].rstrip("/").split("/")[-2]
        await self.stream(session_id, send)

    async def stream(self, session_id: str, send: Send) -> None:
        from nats.js import api

        assert self.acks is not None
        delivered: list[Any] = []
        wake = asyncio.Event()

        async def on_msg(msg: Any) -> None:
            delivered.append(msg)
            wake.set()

        sub = await self.js.subscribe(
            f"kgent.session.{session_id}.>",
            cb=on_msg,
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.NEW,
            idle_heartbeat=5.0,
        )
        self.turn_count += 1
        turn = Turn(format(self.turn_count, "x"))
        self.acks.turns[turn.key] = turn
        producer = asyncio.create_task(self.produce(session_id, uuid.uuid4().hex, turn))
        producer.add_done_callback(lambda _: wake.set())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream"),
                        (b"cache-control", b"no-cache"),
                    ],
                }
            )
            done = False
            while not done:
                await wake.wait()
                wake.clear()
                if producer.done() and not delivered and producer.exception() is not None:
                    raise RuntimeError("producer failed") from producer.exception()
                batch, delivered[:] = list(delivered), []
                frames = []
                for msg in batch:
                    # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.…
                    seq = msg.reply.split(".")[5].encode()
                    if msg.subject.endswith(".end"):
                        frames.append(b"id: %s\nevent: complete\ndata: %s\n\n" % (seq, msg.data))
                        done = True
                        break
                    frames.append(b"id: %s\nevent: chunk\ndata: %s\n\n" % (seq, msg.data))
                body = b"".join(frames)
                await send({"type": "http.response.body", "body": body, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await producer
        finally:
            producer.cancel()
            self.acks.turns.pop(turn.key, None)
            await sub.unsubscribe()

    async def produce(self, session_id: str, turn_id: str, turn: Turn) -> None:
        assert self.acks is not None
        request = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "How should I plan my week?"}],
            "stream": True,
        }
        subject = f"kgent.session.{session_id}.chunk"
        reply_prefix = f"{self.acks.prefix}.{turn.key}."
        publish = self.nc.publish
        index = 0
        async for data in self.upstream.events(json.dumps(request).encode()):
            event = json.loads(data)
            choices = event.get("choices") or ()
            text = choices[0].get("delta", {}).get("content") if choices else None
            if not text:
                continue
            payload = json.dumps({"turn_id": turn_id, "index": index, "text": text}).encode()
            await publish(
                subject,
                payload,
                reply=f"{reply_prefix}{turn.sent}",
                headers={"Nats-Msg-Id": f"{turn_id}:{index}"},
            )
            index += 1
            turn.sent += 1
            if turn.sent - turn.acked >= ACK_WINDOW:
                await turn.wait_acks(turn.sent - ACK_WINDOW // 2)
        end = json.dumps({"turn_id": turn_id, "chunks": index}).encode()
        await publish(
            f"kgent.session.{session_id}.end",
            end,
            reply=f"{reply_prefix}{turn.sent}",
            headers={"Nats-Msg-Id": f"{turn_id}:end"},
        )
        turn.sent += 1
        await turn.wait_acks(turn.sent)
        if turn.failed:
            raise RuntimeError(turn.failed)


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    upstream: RawUpstream | HttpxUpstream = (
        RawUpstream(args.upstream)
        if args.upstream_client == "raw"
        else HttpxUpstream(args.upstream)
    )
    uvicorn.run(
        PassThrough(args.nats, upstream),
        host=harness.HOST,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=2,
    )


def start_pass_through(
    registry: harness.Processes, *, nats_url: str, upstream_url: str, client: str
) -> Proc:
    port = harness.free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", "--port", str(port)]
    argv += ["--nats", nats_url, "--upstream", upstream_url, "--upstream-client", client]
    proc = registry.spawn("pass-through", argv)
    proc.url = f"http://{harness.HOST}:{port}"
    deadline = time.monotonic() + 30.0
    while True:
        try:
            httpx.get(f"{proc.url}/ready", timeout=1.0)
        except httpx.HTTPError:
            pass
        else:
            return proc
        if not proc.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"pass-through did not start: {proc.log_tail()}")
        time.sleep(0.05)


# -- the benchmark ------------------------------------------------------------------------------


def side_report(stats: SideStats, cpu_names: tuple[str, ...]) -> dict[str, Any]:
    report = stats.report()
    wall = sum(stats.walls)
    if stats.chunks:
        report["cpu_us_per_token"] = {
            name: round(1e6 * stats.cpu.get(name, 0.0) / stats.chunks, 1) for name in cpu_names
        }
    if wall:
        report["cores_used"] = {
            name: round(stats.cpu.get(name, 0.0) / wall, 3) for name in cpu_names
        }
        report["cores_used"]["all"] = round(sum(stats.cpu.values()) / wall, 3)
    return report


async def run(args: argparse.Namespace, procs: dict[str, Proc]) -> list[dict[str, Any]]:
    upstream, floor = procs["upstream"], procs["pass-through"]
    bench = Bench(args, procs, started=time.monotonic())
    direct_url = f"{upstream.url}/chat/completions"
    direct_cpu = ("upstream", "client")
    floor_cpu = ("upstream", "nats", "pass-through", "client")
    scenarios = []
    async with AsyncExitStack() as stack:
        api = await stack.enter_async_context(httpx_client(floor.url))
        clients = await load_clients(args.client, stack, api)

        async def direct_round(stats: SideStats, n: int) -> None:
            streams = [partial(direct_stream, clients["direct"], direct_url, args.tokens)] * n
            await bench.round(stats, streams, direct_cpu)

        async def floor_round(stats: SideStats, n: int) -> None:
            ids = [secrets.token_hex(8) for _ in range(n)]
            streams = [
                partial(kgents_stream, clients["kgents"], floor.url, i, "x", args.tokens)
                for i in ids
            ]
            await bench.round(stats, streams, floor_cpu)

        await direct_round(SideStats(), 4)  # warm-up, not counted
        await floor_round(SideStats(), 4)
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            direct, floor_stats = SideStats(), SideStats()
            for index in range(args.rounds):
                if index % 2 == 0:
                    await direct_round(direct, concurrency)
                    await floor_round(floor_stats, concurrency)
                else:
                    await floor_round(floor_stats, concurrency)
                    await direct_round(direct, concurrency)
            d = side_report(direct, direct_cpu)
            f = side_report(floor_stats, floor_cpu)
            scenario = {
                "upstream_delay_ms": args.delay_ms,
                "concurrency": concurrency,
                "rounds": args.rounds,
                "direct": d,
                "pass_through": f,
                "tokens_per_s_ratio": ratio(f["tokens_per_s"], d["tokens_per_s"]),
            }
            log(f"concurrency {concurrency}: {json.dumps(scenario)}")
            scenarios.append(scenario)
        if args.profile_seconds:
            raw: Path = args.profile_raw
            profile = harness.Profile.start(floor.pid, raw, args.profile_seconds)
            try:
                deadline = time.monotonic() + args.profile_seconds
                while time.monotonic() < deadline and profile.proc.poll() is None:
                    await floor_round(SideStats(), 64)
                await asyncio.to_thread(profile.finish)
            finally:
                profile.stop()
    return scenarios


def main(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    result: dict[str, Any] = {
        "bench": "floor_streaming",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": harness.machine(),
        "tokens": args.tokens,
        "upstream_client": args.upstream_client,
        "client": args.client,
    }
    with (
        tempfile.TemporaryDirectory(prefix="kgents-floor-") as tmp,
        harness.processes(
            Path(tmp), keep_logs=Path(args.keep_logs) if args.keep_logs else None
        ) as registry,
    ):
        nats = harness.start_nats(registry, Path(tmp) / "nats")
        upstream = harness.start_fake_openai(registry, tokens=args.tokens, delay_ms=args.delay_ms)
        floor = start_pass_through(
            registry, nats_url=nats.url, upstream_url=upstream.url, client=args.upstream_client
        )
        procs = {"upstream": upstream, "nats": nats, "pass-through": floor}
        if args.profile_seconds:
            out = Path(args.profile_out or tmp)
            out.mkdir(parents=True, exist_ok=True)
            args.profile_raw = out / "pass-through-64-streams.txt"
        result["scenarios"] = asyncio.run(run(args, procs))
        if args.profile_seconds and args.profile_raw.exists():
            result["profile_64_streams"] = harness.summarize_profile(args.profile_raw)
            result["profile_64_streams"]["file"] = str(args.profile_raw)
        result["pass_through_log_tail"] = floor.log_tail(600)
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--concurrency", default="64", help="comma list")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per side")
    parser.add_argument("--upstream-client", choices=("raw", "httpx"), default="raw")
    parser.add_argument(
        "--client",
        choices=("aiohttp", "httpx"),
        default="aiohttp",
        help="this process's HTTP client for the streams, as bench_streaming.py's --client",
    )
    parser.add_argument("--profile-seconds", type=float, default=0)
    parser.add_argument("--profile-out", default="")
    parser.add_argument("--keep-logs", default="")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--nats", default="", help=argparse.SUPPRESS)
    parser.add_argument("--upstream", default="", help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.serve:
        serve(parsed)
    else:
        print(json.dumps(main(parsed), separators=(",", ":")))
        sys.stdout.flush()
