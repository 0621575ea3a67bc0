"""NATS failover in the production topology: a 3-node JetStream cluster with R3 streams, two
``kgents serve`` replicas on one PostgreSQL, the fake OpenAI upstream pacing its tokens so that
turns span the failover. A leader election or a rolling restart is a pause, never a failure."""

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kgents.streaming.connection import NatsConnection
from kgents.streaming.topology import EVENTS_STREAM, USAGE_STREAM
from tests.conftest import ADMIN_TOKEN
from tests.fakes import FakeOpenAI, FakeReply
from tests.support.nats import NatsCluster, nats_cluster
from tests.support.postgres import create_database, drop_database
from tests.support.servers import ServerProcess
from tests.support.sse import SseEvent, read_events
from tests.support.waiting import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(170)]

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
TOKENS = tuple(f" t{i}" for i in range(100))
REPLY = "".join(TOKENS)


@dataclass
class Deployment:
    cluster: NatsCluster
    replicas: list[ServerProcess]
    env: dict[str, str]
    data_dir: Path


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        fake.reply = FakeReply(tokens=TOKENS, delay_seconds=0.08)  # 8 s a turn
        yield fake


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, postgres_server_url: str, fake_openai: FakeOpenAI
) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("cluster")
    database_url = asyncio.run(create_database(postgres_server_url))
    try:
        with nats_cluster(base / "nats") as cluster:
            env = {
                "KGENTS_DATABASE_URL": database_url,
                "KGENTS_NATS_URL": cluster.url,
                "KGENTS_NATS_REPLICAS": "3",
                "KGENTS_ADMIN_TOKEN": ADMIN_TOKEN,
                "KGENTS_LLM_PROVIDER": "openai",
                "KGENTS_LLM_MODEL": "gpt-test",
                "OPENAI_BASE_URL": fake_openai.base_url,
                "OPENAI_API_KEY": "sk-test",
            }
            # One after the other: the first one migrates the database.
            first = ServerProcess(base / "a", env).start()
            try:
                with ServerProcess(base / "b", env) as second:
                    yield Deployment(cluster, [first, second], env, base / "a")
            finally:
                first.stop()
    finally:
        asyncio.run(drop_database(postgres_server_url, database_url))


@pytest.fixture
async def nats(deployment: Deployment) -> AsyncIterator[NatsConnection]:
    connection = await NatsConnection.connect(deployment.cluster.url)
    try:
        yield connection
    finally:
        await connection.close()


async def tenant_sessions(
    client: httpx.AsyncClient, count: int
) -> tuple[dict[str, str], list[str]]:
    """A new tenant's key headers and ``count`` sessions of it."""
    tenant = await client.post("/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=ADMIN)
    key = await client.post(f"/v1/tenants/{tenant.json()['id']}/keys", json={}, headers=ADMIN)
    headers = {"X-API-Key": key.json()["key"]}
    sessions = [
        (await client.post("/v1/kgent/sessions", json={}, headers=headers)).json()["id"]
        for _ in range(count)
    ]
    return headers, sessions


async def stream_turn(
    base_url: str, session_id: str, headers: dict[str, str], started: asyncio.Event | None = None
) -> list[SseEvent]:
    """POST a message and read its reply to the end; ``started`` is set after three chunks."""
    events: list[SseEvent] = []
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=60) as client,
        client.stream(
            "POST",
            f"/v1/kgent/sessions/{session_id}/messages",
            json={"message": "through the failover"},
            headers=headers,
        ) as response,
    ):
        assert response.status_code == 200, await response.aread()
        async for event in read_events(response):
            events.append(event)
            if started is not None and event.event == "chunk" and event.data["index"] == 2:
                started.set()
            if event.event in ("complete", "error"):
                break
    return events


def check_turn(events: list[SseEvent]) -> str:
    """A turn streamed whole: every chunk once, in order, then ``complete``; returns its text."""
    assert events[0].event == "user_message"
    assert events[-1].event == "complete", events[-1]
    chunks = [e for e in events if e.event == "chunk"]
    tokens_before = 0
    for chunk in chunks:
        assert chunk.data["index"] == tokens_before
        tokens_before += chunk.data["text"].count(" t")
    ids = [e.id for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    text = "".join(chunk.data["text"] for chunk in chunks)
    assert text == REPLY == events[-1].data["text"]
    return text


async def stored_replies(client: httpx.AsyncClient, session_id: str, headers: dict[str, str]):  # type: ignore[no-untyped-def]
    messages = await client.get(f"/v1/kgent/sessions/{session_id}/messages", headers=headers)
    assert messages.status_code == 200
    return [
        (m["content"], m.get("status"))
        for m in messages.json()["messages"]
        if m["role"] == "assistant"
    ]


async def replayed_turns(
    client: httpx.AsyncClient, session_id: str, headers: dict[str, str], turns: int
) -> list[SseEvent]:
    """Every event of the session from the start, up to the end of its ``turns``-th turn."""
    events: list[SseEvent] = []
    async with client.stream(
        "GET", f"/v1/kgent/sessions/{session_id}/events", params={"from": "start"}, headers=headers
    ) as response:
        async for event in read_events(response):
            events.append(event)
            if sum(e.event in ("complete", "error") for e in events) == turns:
                break
    return events


async def all_replicas_current(nats: NatsConnection, deployment: Deployment) -> bool:
    """Both streams have a leader and two current followers, every node up."""
    if not all(node.running for node in deployment.cluster.nodes):
        return False
    for stream in (EVENTS_STREAM, USAGE_STREAM):
        try:
            info = await nats.js.stream_info(stream)
        except Exception:
            return False
        cluster = info.cluster
        replicas = (cluster.replicas if cluster else None) or []
        if cluster is None or not cluster.leader or len(replicas) != 2:
            return False
        if not all(r.current and not r.offline for r in replicas):
            return False
    return True


def reconcile_passes(deployment: Deployment) -> bool:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "kgents",
            "metering",
            "reconcile",
            "--data-dir",
            str(deployment.data_dir),
        ],
        env={**os.environ, **deployment.env},
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0


@dataclass
class Scene:
    """Four sessions of a new tenant, each streamed through a replica: A, B, A, B."""

    client: httpx.AsyncClient  # on replica A
    headers: dict[str, str]
    sessions: list[str]
    urls: list[str]


@pytest.fixture
async def scene(deployment: Deployment, nats: NatsConnection) -> AsyncIterator[Scene]:
    a, b = (replica.base_url for replica in deployment.replicas)
    async with httpx.AsyncClient(base_url=a, timeout=60) as client:
        await eventually(lambda: all_replicas_current(nats, deployment), seconds=60)
        headers, sessions = await tenant_sessions(client, 4)
        yield Scene(client, headers, sessions, [a, b, a, b])


async def test_killing_the_events_leader_while_turns_stream(
    deployment: Deployment, nats: NatsConnection, scene: Scene
) -> None:
    client, headers, sessions = scene.client, scene.headers, scene.sessions
    started = [asyncio.Event() for _ in sessions]
    turns = [
        asyncio.create_task(stream_turn(url, sid, headers, flag))
        for url, sid, flag in zip(scene.urls, sessions, started, strict=True)
    ]
    async with asyncio.timeout(30):
        await asyncio.gather(*(flag.wait() for flag in started))
    leader = (await nats.js.stream_info(EVENTS_STREAM)).cluster.leader  # type: ignore[union-attr]
    killed = deployment.cluster.node(leader)
    killed.kill()

    results = await asyncio.gather(*turns)
    texts = [check_turn(events) for events in results]
    for session_id, text in zip(sessions, texts, strict=True):
        assert await stored_replies(client, session_id, headers) == [(text, "complete")]
        replay = await replayed_turns(client, session_id, headers, turns=1)
        assert check_turn(replay) == text

    killed.start()
    await eventually(lambda: all_replicas_current(nats, deployment), seconds=60)

    async def reconciled() -> bool:
        return await asyncio.to_thread(reconcile_passes, deployment)

    await eventually(reconciled, seconds=60, every=1.0)


async def test_a_rolling_restart_while_turns_stream(
    deployment: Deployment, nats: NatsConnection, scene: Scene
) -> None:
    restarting = True
    done: list[list[SseEvent]] = []

    async def keep_streaming(url: str, session_id: str) -> None:
        while restarting:
            done.append(await stream_turn(url, session_id, scene.headers))

    workers = [
        asyncio.create_task(keep_streaming(url, sid))
        for url, sid in zip(scene.urls, scene.sessions, strict=True)
    ]
    for node in deployment.cluster.nodes:
        node.stop()  # SIGTERM, as a rolling upgrade stops a server
        node.start()
        await eventually(lambda: all_replicas_current(nats, deployment), seconds=60)
    restarting = False
    await asyncio.gather(*workers)

    assert len(done) >= 4
    for events in done:
        check_turn(events)
    for session_id in scene.sessions:
        stored = await stored_replies(scene.client, session_id, scene.headers)
        assert stored and all(reply == (REPLY, "complete") for reply in stored)
