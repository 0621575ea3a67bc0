"""Helpers of the metering flow tests: events, raw publishing, processors, a scripted HTTP
endpoint for the OpenMeter sink, a second kgents process as the OpenMeter, and reading event
keys straight from a database."""

import asyncio
import contextlib
import itertools
import json
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import nats.js.errors
import uvicorn
from fastapi import FastAPI
from sqlalchemy import text

from kgents.api.app import create_app
from kgents.config import Settings
from kgents.metering.ports import MeteringStore, UsageSink
from kgents.metering.processor import MeteringProcessor
from kgents.records import UsageEvent
from kgents.store.engine import create_engine, database_url
from kgents.streaming.connection import NatsConnection
from kgents.streaming.topology import USAGE_STREAM
from kgents.streaming.usage_consumer import METERING_CONSUMER, ConsumerSpec, UsageConsumer
from tests.conftest import Api
from tests.support.servers import ServerProcess

_ids = itertools.count()
DEFAULT_SPEC = ConsumerSpec()
T0 = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def tokens_event(
    subject: str, tokens_in: int, tokens_out: int = 0, *, id: str | None = None
) -> UsageEvent:
    return UsageEvent(
        id=id or f"flow-{time.time_ns()}-{next(_ids)}",
        type="llm.tokens",
        subject=subject,
        time=T0,
        data={"tokens_in": tokens_in, "tokens_out": tokens_out, "model": "demo"},
    )


def processor(
    conn: NatsConnection,
    store: MeteringStore,
    *,
    spec: ConsumerSpec = DEFAULT_SPEC,
    sink: UsageSink | None = None,
) -> MeteringProcessor:
    """A processor with short waits, for tests."""
    return MeteringProcessor(
        source=UsageConsumer(conn, spec=spec),
        store=store,
        sink=sink,
        max_wait_seconds=0.2,
        retry_base_seconds=0.05,
        retry_max_seconds=0.2,
    )


async def drain_until(
    processor: MeteringProcessor, done: Callable[[], Awaitable[bool]], *, seconds: float = 10.0
) -> None:
    """Run ``drain_once`` until ``done()`` holds (bounded)."""
    async with asyncio.timeout(seconds):
        while not await done():
            await processor.drain_once()


async def consumer_idle(conn: NatsConnection) -> bool:
    """Nothing pending and nothing awaiting an ack on the ``metering`` consumer."""
    try:
        info = await conn.js.consumer_info(USAGE_STREAM, METERING_CONSUMER)
    except nats.js.errors.NotFoundError:
        return False  # not created yet: the first fetch creates it
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def republish_without_dedupe(conn: NatsConnection) -> int:
    """Publish every stored usage message again with no ``Nats-Msg-Id``, so that JetStream
    keeps the copies and only the meter store can tell they are duplicates."""
    info = await conn.js.stream_info(USAGE_STREAM)
    count = 0
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        stored = await conn.js.get_msg(USAGE_STREAM, seq)
        assert stored.subject is not None and stored.data is not None
        await conn.js.publish(stored.subject, stored.data)
        count += 1
    return count


async def event_keys(url: str, *, subject: str | None = None) -> list[tuple[str, str]]:
    """``(source, id)`` of every event in a database's meter store, read with plain SQL."""
    engine = create_engine(database_url(Settings(database_url=url)))
    try:
        async with engine.connect() as connection:
            sql = "SELECT source, id FROM meter_events"
            params: dict[str, Any] = {}
            if subject is not None:
                sql += " WHERE subject = :subject"
                params["subject"] = subject
            rows = (await connection.execute(text(sql), params)).all()
    finally:
        await engine.dispose()
    return sorted((row[0], row[1]) for row in rows)


async def outbox_keys(url: str) -> list[tuple[str, str]]:
    engine = create_engine(database_url(Settings(database_url=url)))
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(text("SELECT source, id FROM usage_outbox"))).all()
    finally:
        await engine.dispose()
    return sorted((row[0], row[1]) for row in rows)


@contextlib.asynccontextmanager
async def running_api(settings: Settings) -> AsyncIterator[Api]:
    """The whole application (real lifespan and workers) and a client for it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kgents.test") as client:
            yield Api(app=app, client=client, settings=settings)


async def converse(api: Api, key: str, messages: int) -> tuple[int, int]:
    """Open a session and send ``messages`` messages; the tokens (in, out) of the replies."""
    headers = {"X-API-Key": key}
    session = await api.client.post("/v1/kgent/sessions", json={}, headers=headers)
    assert session.status_code == 201, session.text
    tokens_in = tokens_out = 0
    for index in range(messages):
        reply = await api.client.post(
            f"/v1/kgent/sessions/{session.json()['id']}/messages",
            json={"message": f"question {index}: how do I plan?", "stream": False},
            headers=headers,
        )
        assert reply.status_code == 201, reply.text
        tokens_in += reply.json()["tokens_in"]
        tokens_out += reply.json()["tokens_out"]
    return tokens_in, tokens_out


# -- a scripted HTTP endpoint -------------------------------------------------------------


@dataclass
class Received:
    """One request the scripted endpoint got, and how it answered."""

    content_type: str | None
    authorization: str | None
    events: list[dict[str, Any]]
    answer: str

    @property
    def ids(self) -> list[str]:
        return [event["id"] for event in self.events]


@dataclass
class ScriptedEndpoint:
    """An OpenMeter ingest endpoint for tests: each request takes the next answer from
    ``script`` (``"503"``, ``"429"``, ``"401"``, ``"400"``, or ``"hang"``: pass the batch on,
    then answer only after ``hang_seconds``, as a server whose reply is lost), and when the
    script is empty passes the batch on. Passing on means forwarding to ``upstream`` (a real
    kgents) when there is one, else answering 204. ``refuse`` may name a problem with a batch:
    then the answer is 400 with that detail. While ``unavailable`` is set (an outage window,
    switched from another thread), every request is answered 503 and the script waits."""

    upstream: str | None = None
    hang_seconds: float = 1.0
    script: deque[str] = field(default_factory=deque)
    unavailable: bool = False
    refuse: Callable[[list[dict[str, Any]]], str | None] = lambda events: None
    received: list[Received] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        events = json.loads(body) if body else []
        if self.unavailable:
            answer = "503"
        else:
            answer = self.script.popleft() if self.script else "pass"
        refused = self.refuse(events)
        if answer == "pass" and refused is not None:
            answer = "400"
        self.received.append(
            Received(headers.get("content-type"), headers.get("authorization"), events, answer)
        )
        if answer in ("503", "429", "401", "400"):
            detail = refused or f"injected {answer}"
            extra = [(b"retry-after", b"0")] if answer == "429" else []
            await _respond(send, int(answer), {"title": "injected", "detail": detail}, extra)
            return
        status = await self._pass_on(body, headers)
        if answer == "hang":
            await asyncio.sleep(self.hang_seconds)
        await _respond(send, status, None, [])

    async def _pass_on(self, body: bytes, received: dict[str, str]) -> int:
        if self.upstream is None:
            return 204
        headers = {"Content-Type": received.get("content-type", "")}
        if "authorization" in received:
            headers["Authorization"] = received["authorization"]
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.post(
                f"{self.upstream}/api/v1/events", content=body, headers=headers
            )
        return response.status_code

    def ids_sent(self) -> list[str]:
        return [event_id for request in self.received for event_id in request.ids]

    def answers(self) -> list[str]:
        return [request.answer for request in self.received]


async def _respond(
    send: Any, status: int, problem: dict[str, Any] | None, extra: list[tuple[bytes, bytes]]
) -> None:
    body = json.dumps(problem).encode() if problem is not None else b""
    headers = [(b"content-type", b"application/problem+json"), *extra] if problem else extra
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


ENDPOINT_TOKEN = "kg_admin_openmeter_endpoint_0123456789ab"


class OpenMeterKgents:
    """``kgents serve`` in its own process, data dir, SQLite database and embedded NATS, as an
    OpenMeter (its ``POST /api/v1/events`` is OpenMeter's ingest API)."""

    def __init__(self, base: Path) -> None:
        self.database_url = f"sqlite:///{base / 'openmeter.db'}"
        env = {
            "KGENTS_ADMIN_TOKEN": ENDPOINT_TOKEN,
            "KGENTS_DATABASE_URL": self.database_url,
            "KGENTS_NATS_URL": "",
            "KGENTS_OPENMETER_URL": "",
        }
        self.server = ServerProcess(base / "data", env)

    @property
    def url(self) -> str:
        return self.server.base_url

    async def total(self, meter: str, subject: str) -> float:
        """The meter's all-time value for ``subject``, through its OpenMeter query API."""
        async with httpx.AsyncClient(base_url=self.url, timeout=5.0) as client:
            response = await client.get(
                f"/api/v1/meters/{meter}/query",
                params={"subject": subject},
                headers={"Authorization": f"Bearer {ENDPOINT_TOKEN}"},
            )
        assert response.status_code == 200, response.text
        return float(sum(row["value"] for row in response.json()["data"]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 in a thread; yield its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="scripted-endpoint", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the scripted endpoint did not start")
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def platform_of(app: FastAPI) -> Any:
    return app.state.platform
