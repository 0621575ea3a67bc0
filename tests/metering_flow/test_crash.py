"""The crash test of metering: 50 streaming turns against the demo provider while the API
process (``kgents serve``) is killed with SIGKILL three times and restarted, its nats-server is
restarted once, and the OpenMeter it forwards to (a second kgents process behind a proxy)
answers 503 for several seconds. After draining, every finished turn is billed exactly once:
one ``llm.tokens`` event per turn, meter totals equal to the turns' tokens, and OpenMeter's
copy equal to ours.

Faults are set off by what the clients see (a chunk in the middle of a reply, the first event
of a turn, the end of a turn), not by timers, so each one lands where it is meant to. The
clients retry whatever a fault broke with a new message, as a user would; what was billed is
judged from the database, not from what the clients saw.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from kgents.config import Settings
from kgents.metering.events import llm_tokens_event_id
from kgents.metering.meters import load_meters
from kgents.metering.reconcile import reconcile
from kgents.store.engine import create_engine, database_url
from kgents.store.meter_repo import SqlMeterStore
from kgents.store.sessions_repo import SqlSessionStore
from kgents.streaming.connection import NatsConnection
from kgents.streaming.topology import USAGE_STREAM
from kgents.streaming.usage_consumer import METERING_CONSUMER
from tests.conftest import ADMIN_TOKEN
from tests.metering_flow.support import (
    ENDPOINT_TOKEN,
    OpenMeterKgents,
    ScriptedEndpoint,
    consumer_idle,
    serving,
)
from tests.support.nats import NatsServer
from tests.support.servers import ServerProcess
from tests.support.sse import SseEvent, read_events
from tests.support.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
logger = logging.getLogger(__name__)

TURNS = 50
CONVERSATIONS_PER_TENANT = 3
TURN_LEASE_SECONDS = 2
ACK_WAIT_SECONDS = 3
OUTAGE_SECONDS = 2.0
ATTEMPT_SECONDS = 30.0  # one turn as the client sees it; longer means a hang
RUN_SECONDS = 80.0  # a bound for failures: this part takes 30-55 s on a busy 2-core machine
DRAIN_SECONDS = 30.0
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# What a fault may do to a turn the client is taking (the client then asks again): the API
# dies (``connection``, ``cut``), refuses while NATS is away (503) or while the turn the crash
# cut short is not closed yet (409), or the turn fails as NATS goes away.
RETRIED = {
    "connection",
    "cut",
    "status:409",
    "status:503",
    "error:events_unavailable",
    "error:interrupted",
    "error:turn_failed",
}
RETRY_PAUSE_SECONDS = 0.25


@dataclass
class Clients:
    """What the clients did so far, and the fault trigger they watch for."""

    completed: int = 0
    claimed: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    _trigger: Callable[[SseEvent], bool] | None = None
    _fired: asyncio.Event = field(default_factory=asyncio.Event)

    def saw(self, event: SseEvent) -> None:
        if self._trigger is not None and self._trigger(event):
            self._trigger = None
            self._fired.set()

    async def wait_for(self, *, turns: int, event: Callable[[SseEvent], bool]) -> None:
        """Return once ``turns`` turns completed and then a client saw ``event``."""
        await eventually(self._reached(turns), seconds=RUN_SECONDS, every=0.05)
        self._fired.clear()
        self._trigger = event
        async with asyncio.timeout(RUN_SECONDS):
            await self._fired.wait()

    def _reached(self, turns: int) -> Callable[[], Awaitable[bool]]:
        async def reached() -> bool:
            return self.completed >= turns

        return reached


def mid_reply(event: SseEvent) -> bool:
    return event.event == "chunk" and event.data["index"] >= 8


def turn_started(event: SseEvent) -> bool:
    return event.event == "user_message"


def turn_ended(event: SseEvent) -> bool:
    return event.event == "complete"


async def test_crashes_and_outages_bill_every_turn_exactly_once(
    tmp_path: Path, nats: NatsServer
) -> None:
    started = time.monotonic()
    endpoint = OpenMeterKgents(tmp_path / "openmeter")
    proxy = ScriptedEndpoint(upstream=endpoint.url)
    url = f"sqlite:///{tmp_path / 'kgents.db'}"
    api: ServerProcess | None = None
    try:
        with serving(proxy) as proxy_url:
            env = {
                "KGENTS_DATABASE_URL": url,
                "KGENTS_NATS_URL": nats.url,
                "KGENTS_ADMIN_TOKEN": ADMIN_TOKEN,
                "KGENTS_LLM_PROVIDER": "demo",
                "KGENTS_DEMO_TOKEN_DELAY_MS": "10",
                "KGENTS_TURN_LEASE_SECONDS": str(TURN_LEASE_SECONDS),
                "KGENTS_OPENMETER_URL": proxy_url,
                "KGENTS_OPENMETER_TOKEN": ENDPOINT_TOKEN,
                "KGENTS_OPENMETER_TIMEOUT_SECONDS": "2",
                # Usage events a killed process had fetched come back after this, not 30 s.
                "KGENTS_METERING_ACK_WAIT_SECONDS": str(ACK_WAIT_SECONDS),
            }
            api = ServerProcess(tmp_path / "data", env)
            await _start_together(endpoint.server, api)
            clients = Clients()
            async with httpx.AsyncClient(base_url=api.base_url, timeout=10.0) as http:
                tenants = [await _tenant(http, name) for name in ("acme", "globex")]
                conversations = [
                    (headers, await _session(http, headers))
                    for _, headers in tenants
                    for _ in range(CONVERSATIONS_PER_TENANT)
                ]
                faults = asyncio.create_task(_faults(clients, api, nats, proxy))
                try:
                    async with asyncio.timeout(RUN_SECONDS):
                        await asyncio.gather(
                            *(
                                _converse(http, clients, number, headers, session_id, faults)
                                for number, (headers, session_id) in enumerate(conversations)
                            )
                        )
                        await faults  # every fault happened (or its error is raised here)
                finally:
                    faults.cancel()
                    await asyncio.gather(faults, return_exceptions=True)
            logger.info(
                "turns done after %.1fs: %s", time.monotonic() - started, dict(clients.outcomes)
            )
            assert clients.completed == clients.claimed >= TURNS
            assert set(clients.outcomes) <= RETRIED | {"complete"}, clients.outcomes

            async with _database(url) as local, _database(endpoint.database_url) as remote:
                async with _nats(nats) as conn:
                    consumer = await conn.js.consumer_info(USAGE_STREAM, METERING_CONSUMER)
                    assert consumer.config.ack_wait == ACK_WAIT_SECONDS  # the setting took
                    await eventually(
                        lambda: _drained(local, remote, conn), seconds=DRAIN_SECONDS, every=0.2
                    )
                logger.info("drained after %.1fs", time.monotonic() - started)
                tenant_ids = [tenant_id for tenant_id, _ in tenants]
                await _assert_billed_exactly_once(local, remote, tenant_ids=tenant_ids)
                await _assert_openmeter_totals(endpoint, local, tenant_ids=tenant_ids)
            answers = Counter(proxy.answers())
            assert answers["503"] >= 2 and answers["pass"] >= 1, answers
    finally:
        if api is not None:
            await asyncio.to_thread(api.stop)
        await asyncio.to_thread(endpoint.server.stop)


# -- the clients ----------------------------------------------------------------------------


async def _tenant(http: httpx.AsyncClient, name: str) -> tuple[str, dict[str, str]]:
    tenant = await http.post(
        "/v1/tenants", json={"name": name, "plan": "enterprise"}, headers=ADMIN
    )
    assert tenant.status_code == 201, tenant.text
    tenant_id: str = tenant.json()["id"]
    key = await http.post(f"/v1/tenants/{tenant_id}/keys", json={}, headers=ADMIN)
    assert key.status_code == 201, key.text
    return tenant_id, {"X-API-Key": key.json()["key"]}


async def _session(http: httpx.AsyncClient, headers: dict[str, str]) -> str:
    session = await http.post("/v1/kgent/sessions", json={}, headers=headers)
    assert session.status_code == 201, session.text
    session_id: str = session.json()["id"]
    return session_id


async def _converse(
    http: httpx.AsyncClient,
    clients: Clients,
    number: int,
    headers: dict[str, str],
    session_id: str,
    faults: "asyncio.Task[None]",
) -> None:
    """Take turns until ``TURNS`` are claimed and every fault happened (turns that ride a
    fault can outpace the schedule); a turn a fault broke is asked again."""
    attempt = 0
    while clients.claimed < TURNS or not faults.done():
        clients.claimed += 1
        while True:
            if faults.done() and faults.exception() is not None:
                return  # the faults task failed; the test reports its error
            attempt += 1
            message = f"conversation {number}, message {attempt}: how do I plan my week?"
            outcome = await _send(http, clients, headers, session_id, message)
            clients.outcomes[outcome] += 1
            if outcome == "complete":
                clients.completed += 1
                break
            if outcome not in RETRIED:
                raise AssertionError(f"unexpected answer to a turn: {outcome}")
            await asyncio.sleep(RETRY_PAUSE_SECONDS)  # the user waits, then asks again


async def _send(
    http: httpx.AsyncClient,
    clients: Clients,
    headers: dict[str, str],
    session_id: str,
    message: str,
) -> str:
    """One streamed turn: ``complete``, ``error:<code>``, ``status:<code>``, ``connection``
    (the API was unreachable or died) or ``cut`` (the stream ended without an end event)."""
    try:
        async with (
            asyncio.timeout(ATTEMPT_SECONDS),
            http.stream(
                "POST",
                f"/v1/kgent/sessions/{session_id}/messages",
                json={"message": message},
                headers=headers,
            ) as response,
        ):
            if response.status_code != 200:
                await response.aread()
                return f"status:{response.status_code}"
            async for event in read_events(response):
                clients.saw(event)
                if event.event == "complete":
                    return "complete"
                if event.event == "error":
                    return f"error:{event.data['error']['code']}"
            return "cut"
    except httpx.TransportError:
        return "connection"


# -- the faults -----------------------------------------------------------------------------


async def _faults(
    clients: Clients, api: ServerProcess, nats: NatsServer, proxy: ScriptedEndpoint
) -> None:
    """Kill the API just as a turn ends; take OpenMeter away and kill the API while it holds
    a batch for it; restart NATS; kill the API just as a turn starts. Other conversations are
    in the middle of a reply each time."""
    await clients.wait_for(turns=5, event=turn_ended)
    await _crash_and_restart(api)  # that turn's llm.tokens event may not be relayed yet

    await clients.wait_for(turns=14, event=mid_reply)
    proxy.unavailable = True
    # Three refusals: the sink gave up on its attempts and the processor holds the batch.
    await eventually(lambda: _answered_503(proxy, after=0, times=3), seconds=RUN_SECONDS)
    await _crash_and_restart(api)  # the held batch is left unacknowledged
    answered = len(proxy.answers())
    await eventually(lambda: _answered_503(proxy, after=answered, times=1), seconds=RUN_SECONDS)
    await asyncio.sleep(OUTAGE_SECONDS)  # and the outage goes on for a while
    proxy.unavailable = False

    await clients.wait_for(turns=24, event=mid_reply)
    await asyncio.to_thread(nats.restart)
    await eventually(lambda: _healthy(api), seconds=RUN_SECONDS, every=0.1)

    await clients.wait_for(turns=34, event=turn_started)
    await _crash_and_restart(api)


async def _start_together(*servers: ServerProcess) -> None:
    """Start the servers at once (each boot takes seconds); raise the first failure only
    once every start is over, so that nothing is left starting behind the test's back."""
    results = await asyncio.gather(
        *(asyncio.to_thread(server.start) for server in servers), return_exceptions=True
    )
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def _crash_and_restart(api: ServerProcess) -> None:
    await asyncio.to_thread(api.kill)
    await asyncio.to_thread(api.start)


async def _answered_503(proxy: ScriptedEndpoint, *, after: int, times: int) -> bool:
    """The proxy refused ``times`` requests with 503 since its ``after``-th request."""
    return proxy.answers()[after:].count("503") >= times


async def _healthy(api: ServerProcess) -> bool:
    try:
        async with httpx.AsyncClient(timeout=1.0) as client:
            return (await client.get(f"{api.base_url}/health")).status_code == 200
    except httpx.HTTPError:
        return False


# -- draining and checking ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _database(url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url(Settings(database_url=url)))
    try:
        yield engine
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def _nats(server: NatsServer) -> AsyncIterator[NatsConnection]:
    connection = await NatsConnection.connect(server.url)
    try:
        yield connection
    finally:
        await connection.close()


async def _rows(engine: AsyncEngine, sql: str) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(sql))).all())


async def _event_keys(engine: AsyncEngine) -> list[tuple[str, str]]:
    return sorted((r[0], r[1]) for r in await _rows(engine, "SELECT source, id FROM meter_events"))


async def _drained(local: AsyncEngine, remote: AsyncEngine, conn: NatsConnection) -> bool:
    """No turn running, nothing in the outbox, nothing pending on the ``metering`` consumer,
    and OpenMeter holds every event we hold."""
    (running,) = await _rows(local, "SELECT count(*) FROM turns WHERE status = 'running'")
    (unsent,) = await _rows(local, "SELECT count(*) FROM usage_outbox WHERE sent_at IS NULL")
    if running[0] or unsent[0] or not await consumer_idle(conn):
        return False
    return await _event_keys(local) == await _event_keys(remote)


async def _assert_billed_exactly_once(
    local: AsyncEngine, remote: AsyncEngine, *, tenant_ids: list[str]
) -> None:
    turns = await _rows(
        local, "SELECT id, tenant_id, status, tokens_in, tokens_out, estimated FROM turns"
    )
    statuses = Counter(turn.status for turn in turns)
    logger.info("turns in the database: %s", dict(statuses))
    assert statuses["complete"] >= TURNS  # more when a crash hid a completion from its client
    assert statuses["interrupted"] >= 1  # the crashes cut turns short; recovery closed them
    assert "running" not in statuses
    assert all(turn.estimated for turn in turns if turn.status == "interrupted")

    # One llm.tokens event per turn that generated anything, with the turn's id and tokens.
    billed = {t.id: t for t in turns if t.tokens_in or t.tokens_out}
    ours = await _token_events(local)
    assert [turn for turn, n in Counter(e.turn_id for e in ours).items() if n > 1] == []
    assert {e.turn_id for e in ours} == set(billed)
    for event in ours:
        turn = billed[event.turn_id]
        assert event == TokenEvent(
            llm_tokens_event_id(turn.id), turn.tenant_id, turn.id, turn.tokens_in, turn.tokens_out
        )

    # The meters agree with the turns, tenant by tenant.
    meters = SqlMeterStore(local, load_meters(None))
    rows = await reconcile(turns=SqlSessionStore(local), meters=meters)
    assert [row.tenant_id for row in rows] == sorted(tenant_ids)
    assert [row for row in rows if not row.matches] == []
    for row in rows:
        assert row.turns_in == sum(t.tokens_in for t in turns if t.tenant_id == row.tenant_id)
        assert row.turns_out == sum(t.tokens_out for t in turns if t.tenant_id == row.tenant_id)
    assert await meters.dead_letter_count() == 0

    # OpenMeter holds the same events, each once.
    assert await _event_keys(remote) == await _event_keys(local)
    assert sorted(await _token_events(remote)) == sorted(ours)


@dataclass(frozen=True, order=True)
class TokenEvent:
    id: str
    subject: str
    turn_id: str
    tokens_in: int
    tokens_out: int


async def _token_events(engine: AsyncEngine) -> list[TokenEvent]:
    """The ``llm.tokens`` events of a meter store."""
    rows = await _rows(
        engine, "SELECT id, subject, data FROM meter_events WHERE type = 'llm.tokens'"
    )
    events = []
    for row in rows:
        data = json.loads(row.data) if isinstance(row.data, str) else row.data
        events.append(
            TokenEvent(row.id, row.subject, data["turn_id"], data["tokens_in"], data["tokens_out"])
        )
    return events


async def _assert_openmeter_totals(
    endpoint: OpenMeterKgents, local: AsyncEngine, *, tenant_ids: list[str]
) -> None:
    """OpenMeter's own meters, through its query API, equal ours."""
    meters = SqlMeterStore(local, load_meters(None))
    for meter in ("llm_tokens_in", "llm_tokens_out", "session_count", "api_requests"):
        ours = await meters.totals_by_subject(meter)
        for tenant_id in tenant_ids:
            assert await endpoint.total(meter, tenant_id) == ours.get(tenant_id, 0.0), meter
