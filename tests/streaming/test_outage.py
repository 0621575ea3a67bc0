"""NATS down: refused at once with ``EventsUnavailable``; NATS back: everything resumes."""

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kgents.clock import utc_now
from kgents.config import Settings
from kgents.errors import EventsUnavailable, InvalidInput
from kgents.ids import new_id
from kgents.llm.base import GenerationRequest, StreamItem, TextDelta, Usage
from kgents.platform import open_platform
from kgents.sessions.generation import PlannedTurn, TurnRunner
from kgents.sessions.ports import SessionEvent
from kgents.streaming.bridge import JetStreamEventLog
from kgents.streaming.connection import NatsConnection, parse_servers
from kgents.streaming.nats_process import free_port
from kgents.streaming.topology import ensure_streams
from tests.support.nats import NatsServer, nats_server
from tests.support.turns import running_turn, store_running_turn
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


def event(session_id: str, index: int) -> SessionEvent:
    return SessionEvent(
        session_id=session_id,
        type="chunk",
        data={"text": str(index), "index": index},
        msg_id=f"turn_{session_id}:{index}",
    )


def test_server_lists() -> None:
    assert parse_servers("nats://a:4222, nats://b:4222,") == ["nats://a:4222", "nats://b:4222"]
    with pytest.raises(InvalidInput):
        parse_servers(" , ")
    with pytest.raises(InvalidInput):
        parse_servers("nats://a b:4222")


async def test_connecting_to_nothing_fails() -> None:
    with pytest.raises(EventsUnavailable):
        await NatsConnection.connect(f"nats://127.0.0.1:{free_port()}", connect_timeout=1.0)


async def test_a_cluster_list_with_a_dead_member_connects(nats: NatsServer) -> None:
    conn = await NatsConnection.connect(f"nats://127.0.0.1:{free_port()},{nats.url}")
    try:
        assert conn.is_connected
        assert conn.connected_url == nats.url
    finally:
        await conn.close()


async def test_refused_at_once_while_down_publish_pauses_then_recovers(
    own_nats: NatsServer,
) -> None:
    conn = await NatsConnection.connect(own_nats.url)
    try:
        await ensure_streams(conn, replicas=1)
        # Timeouts of an hour: only refusing (after a 2 s wait for a reconnect), not timing
        # out, ends the calls below.
        log = JetStreamEventLog(conn, ack_timeout=3600.0, outage_seconds=3600.0)
        session_id = new_id("ses")
        assert await log.publish(event(session_id, 0)) == 1

        own_nats.kill()

        async def down() -> bool:
            return not conn.is_connected

        await eventually(down)
        assert not log.is_connected()
        with pytest.raises(EventsUnavailable):
            await log.batch().add(event(session_id, 1))
        with pytest.raises(EventsUnavailable):
            await log.open_follower(session_id, after_seq=0)
        with pytest.raises(EventsUnavailable):
            await log.request_cancel(session_id)
        # A publish is a pause, not a failure: it waits for the server (up to the failover
        # time, 30 s by default) and is stored once it is back.
        pausing = asyncio.create_task(log.publish(event(session_id, 1)))
        with pytest.raises(EventsUnavailable):  # only a longer outage fails it
            await JetStreamEventLog(conn, failover_seconds=0.3).publish(event(session_id, 9))
        assert not pausing.done()
        # A new turn waits briefly for a reconnect before it is refused.
        assert not await log.wait_connected(0.1)
        reconnecting = asyncio.create_task(log.wait_connected(3600.0))

        own_nats.start()  # same port, same store

        async def up() -> bool:
            return conn.is_connected

        await eventually(up)
        assert conn.reconnects == 1
        assert await reconnecting
        assert await pausing == 2  # the store survived the crash
        assert await log.publish(event(session_id, 1)) == 2  # a repeat is a duplicate
        assert await log.publish(event(session_id, 2)) == 3
    finally:
        await conn.close()


async def test_a_follower_resumes_after_a_restart(own_nats: NatsServer) -> None:
    conn = await NatsConnection.connect(own_nats.url)
    try:
        await ensure_streams(conn, replicas=1)
        log = JetStreamEventLog(conn, heartbeat_seconds=1.0, outage_seconds=8.0)
        session_id = new_id("ses")
        follower = await log.open_follower(session_id, after_seq=None, from_start=True)
        seen: list[int] = []

        async def read(n: int) -> None:
            async for received in follower:
                seen.append(received.event.data["index"])
                if len(seen) == n:
                    return

        try:
            for i in range(3):
                await log.publish(event(session_id, i))
            async with asyncio.timeout(5):
                await read(3)
            reading = asyncio.create_task(read(6))
            await asyncio.sleep(0.1)  # the follower waits inside a pull request

            await asyncio.to_thread(own_nats.stop)  # the event loop keeps running meanwhile

            async def down() -> bool:
                return not conn.is_connected

            await eventually(down)
            await asyncio.to_thread(own_nats.start)

            async def reconnected() -> bool:
                return conn.reconnects == 1

            await eventually(reconnected)
            for i in range(3, 6):
                await log.publish(event(session_id, i))
            async with asyncio.timeout(8):
                await reading
            assert seen == [0, 1, 2, 3, 4, 5]
        finally:
            await follower.aclose()
    finally:
        await conn.close()


async def test_a_batch_fails_when_acks_do_not_come(own_nats: NatsServer) -> None:
    conn = await NatsConnection.connect(own_nats.url)
    try:
        await ensure_streams(conn, replicas=1)
        log = JetStreamEventLog(conn, ack_timeout=0.5)
        session_id = new_id("ses")
        batch = log.batch()
        await batch.add(event(session_id, 0))
        await batch.flush()
        own_nats.kill()
        with pytest.raises(EventsUnavailable):  # not a hang: the acks' wait is bounded
            for i in range(1, 2000):
                await batch.add(event(session_id, i))
            await batch.flush()
    finally:
        await conn.close()


async def test_urls_are_logged_and_shown_without_their_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A reconnect is logged with the server's URL, and a failed connect names the servers:
    neither carries the password (nor does the connection's ``connected_url``)."""
    password = "s3cret-" + new_id("pw")
    config = f'authorization {{ user: kgents, password: "{password}" }}\n'
    caplog.set_level(logging.DEBUG)
    with nats_server(tmp_path / "nats", config=config) as server:
        url = f"nats://kgents:{password}@127.0.0.1:{server.port}"
        conn = await NatsConnection.connect(url)
        try:
            assert password not in (conn.connected_url or "")
            server.restart()  # same port: the client reconnects

            async def reconnected() -> bool:
                return conn.reconnects >= 1

            await eventually(reconnected, seconds=15)
        finally:
            await conn.close()
    with pytest.raises(EventsUnavailable) as refused:
        unreachable = f"nats://kgents:{password}@127.0.0.1:{free_port()}"
        await NatsConnection.connect(unreachable, connect_timeout=0.5)
    assert password not in refused.value.message
    with pytest.raises(InvalidInput) as invalid:
        parse_servers(f"nats://kgents:{password}@nats 1:4222")
    assert password not in invalid.value.message
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("nats: reconnected to nats://") for m in messages)
    assert not [m for m in messages if password in m]


class BurstThatCrashesNats:
    """An upstream that answers in a burst and SIGKILLs the nats-server after 300 tokens."""

    name = "burst"
    model = "burst-1"

    def __init__(self, server: NatsServer, tokens: int) -> None:
        self.server = server
        self.tokens = tokens
        self.killed = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        for i in range(self.tokens):
            if i == 300:
                self.server.kill()
                self.killed.set()
            yield TextDelta(f" w{i}")
            await asyncio.sleep(0)
        yield Usage(tokens_in=5, tokens_out=self.tokens, model=self.model)

    async def check(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


async def test_a_turn_rides_a_server_crash_and_stores_what_the_stream_holds(
    own_nats: NatsServer, tmp_path: Path, database_url: str
) -> None:
    """The nats-server is SIGKILLed mid-burst and restarted: the turn pauses instead of
    failing, and its stored reply is exactly the text of its chunks in the stream (it used to
    end ``events_unavailable`` with text that had never reached the stream)."""
    conn = await NatsConnection.connect(own_nats.url)
    settings = Settings(data_dir=tmp_path, database_url=database_url)
    try:
        await ensure_streams(conn, replicas=1)
        log = JetStreamEventLog(conn, ack_timeout=1.0, failover_seconds=60.0)
        async with open_platform(settings) as platform:
            tenant = await platform.tenancy.create_tenant(name="acme", plan="pro")
            session = await platform.sessions.create_session(
                tenant_id=tenant.id, title=None, agent_type="kgent", mode="reflect"
            )
            turn, question = running_turn(session.id, tenant.id, started_at=utc_now())
            await store_running_turn(platform.session_store, turn, question, lease_until=utc_now())
            provider = BurstThatCrashesNats(own_nats, tokens=2000)
            runner = TurnRunner(
                store=platform.session_store, provider=provider, events=log, buffer_size=64
            )
            request = GenerationRequest(system="s", messages=(), temperature=0.5, max_tokens=9)
            running = asyncio.create_task(runner.run(PlannedTurn(turn=turn, request=request)))
            await provider.killed.wait()
            await asyncio.to_thread(own_nats.start)  # same port, same store
            outcome = await running
            await runner.aclose()

        assert (outcome.turn.status, outcome.error) == ("complete", None)
        chunks = await log.read_turn_chunks(session.id, turn.id, first_seq=1)
        tokens_before = 0
        for chunk in chunks:
            assert chunk.data["index"] == tokens_before
            tokens_before += str(chunk.data["text"]).count(" w")
        streamed = "".join(str(chunk.data["text"]) for chunk in chunks)
        assert outcome.message is not None
        assert outcome.message.content == streamed == "".join(f" w{i}" for i in range(2000))
    finally:
        await conn.close()
