"""PostgreSQL restarted (fast shutdown, then up again) while turns stream: the turns finish
and are stored, requests made while it is down get 503 ``database_unavailable`` (never a
500), and every turn is billed once."""

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from kgents.llm.demo import compose_reply
from kgents.metering.meters import load_meters
from kgents.metering.reconcile import reconcile
from kgents.sessions.persona import TEMPERATURE_BY_MODE
from kgents.store.engine import create_engine
from kgents.store.meter_repo import SqlMeterStore
from kgents.store.sessions_repo import SqlSessionStore
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.support.database import async_url
from tests.support.nats import running_nats_server
from tests.support.postgres import DedicatedPostgres, dedicated_postgres
from tests.support.servers import server_in_thread
from tests.support.sse import SseEvent, read_events
from tests.support.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# The demo provider's replies: this one ends while the database is down, the others after.
SHORT = "question number 5"
LONG = ("question number 30", "question number 19")
TOKEN_DELAY_MS = 100
WAIT_SECONDS = 60.0
# Longer than any outage here, so that no lease runs out on a loaded machine: recovery of
# dead processes' turns is not what this test is about.
LEASE_SECONDS = 120.0


@dataclass
class Streamed:
    message: str
    text: list[str] = field(default_factory=list)
    end: SseEvent | None = None

    @property
    def expected_chunks(self) -> int:
        return len(compose_reply(self.message, TEMPERATURE_BY_MODE["reflect"]))


@pytest.fixture
def postgres() -> Iterator[DedicatedPostgres]:
    """A server of this test's own: stopping it must not disturb the other tests."""
    with dedicated_postgres() as server:
        yield server


async def stream_turn(client: httpx.AsyncClient, path: str, key: str, turn: Streamed) -> None:
    body = {"message": turn.message, "mode": "reflect", "stream": True}
    async with client.stream("POST", path, json=body, headers={"X-API-Key": key}) as response:
        assert response.status_code == 200, await response.aread()
        async for event in read_events(response):
            if event.event == "chunk":
                turn.text.append(event.data["text"])
            elif event.event in ("complete", "error"):
                turn.end = event
                return


def assert_database_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database_unavailable"
    assert response.headers["retry-after"] == "1"


async def rows(engine: Any, sql: str) -> list[Any]:
    async with engine.connect() as connection:
        return list((await connection.execute(text(sql))).all())


async def test_turns_finish_and_are_billed_once_across_a_postgresql_restart(
    tmp_path: Path, postgres: DedicatedPostgres
) -> None:
    # A nats-server of its own: the durable metering consumer must be this app's alone.
    with running_nats_server(tmp_path / "nats") as nats_url:
        settings = make_settings(
            tmp_path / "data",
            postgres.url,
            nats_url,
            demo_token_delay_ms=TOKEN_DELAY_MS,
            turn_lease_seconds=LEASE_SECONDS,
        )
        with server_in_thread(settings) as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=WAIT_SECONDS) as client:
                await restart_during_turns(client, postgres)
            await assert_billed_once(postgres.url)


async def restart_during_turns(client: httpx.AsyncClient, postgres: DedicatedPostgres) -> None:
    tenant = await client.post("/v1/tenants", json={"name": "a", "plan": "pro"}, headers=ADMIN)
    tenant_id = tenant.json()["id"]
    created = await client.post(f"/v1/tenants/{tenant_id}/keys", json={"name": "k"}, headers=ADMIN)
    key = created.json()["key"]
    auth = {"X-API-Key": key}
    paths = []
    for _ in range(4):
        session = await client.post("/v1/kgent/sessions", json={}, headers=auth)
        paths.append(f"/v1/kgent/sessions/{session.json()['id']}/messages")
    short, *long = turns = [Streamed(SHORT), *(Streamed(message) for message in LONG)]

    def streaming(*started: Streamed) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return all(len(turn.text) >= 3 for turn in started)

        return check

    async def short_streamed_whole() -> bool:
        return len(short.text) == short.expected_chunks

    # The long turns first, then the short one, so that the short one is far from its end
    # when the database goes down.
    tasks = [
        asyncio.create_task(stream_turn(client, path, key, turn))
        for path, turn in zip(paths[1:], long, strict=False)
    ]
    await eventually(streaming(*long), seconds=WAIT_SECONDS)
    tasks.append(asyncio.create_task(stream_turn(client, paths[0], key, short)))
    await eventually(streaming(short), seconds=WAIT_SECONDS)
    await asyncio.to_thread(postgres.stop)
    try:
        assert_database_unavailable(await client.get("/v1/kgent/sessions", headers=auth))
        body = {"message": "hello", "stream": True}
        assert_database_unavailable(await client.post(paths[3], json=body, headers=auth))
        ready = await client.get("/health/ready")
        assert ready.status_code == 503 and ready.json()["components"]["database"] == "down"
        assert (await client.get("/health/live")).status_code == 200
        # The short turn streams to its end; its end is stored (and sent) only once the
        # database is back.
        await eventually(short_streamed_whole, seconds=WAIT_SECONDS)
        assert short.end is None
        assert all(turn.end is None for turn in long)
    finally:
        await asyncio.to_thread(postgres.start)
    async with asyncio.timeout(WAIT_SECONDS):
        await asyncio.gather(*tasks)
    for turn in turns:
        assert turn.end is not None and turn.end.event == "complete", turn.end
        assert len(turn.text) == turn.expected_chunks
    assert (await client.get("/v1/kgent/sessions", headers=auth)).status_code == 200
    for path, turn in zip(paths, turns, strict=False):
        listed = await client.get(path, headers=auth)
        assert listed.json()["messages"][-1]["content"] == "".join(turn.text)


async def assert_billed_once(url: str) -> None:
    engine = create_engine(async_url(url))
    try:

        async def drained() -> bool:
            (unsent,) = await rows(
                engine, "SELECT count(*) FROM usage_outbox WHERE sent_at IS NULL"
            )
            (billed,) = await rows(
                engine, "SELECT count(*) FROM meter_events WHERE type = 'llm.tokens'"
            )
            return unsent[0] == 0 and billed[0] == 3

        await eventually(drained, seconds=WAIT_SECONDS, every=0.2)
        statuses = await rows(engine, "SELECT status FROM turns")
        assert sorted(status for (status,) in statuses) == ["complete"] * 3
        checked = await reconcile(
            turns=SqlSessionStore(engine), meters=SqlMeterStore(engine, load_meters(None))
        )
        assert checked and all(row.matches for row in checked)
    finally:
        await engine.dispose()
