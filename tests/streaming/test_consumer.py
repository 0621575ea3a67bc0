"""The ordered consumer itself: bounded buffering, no loss when its inbox overflows, clean exits."""

import asyncio
import contextlib
import gc
import weakref

import pytest

from kgents.errors import EventsUnavailable
from kgents.ids import new_id
from kgents.sessions.ports import SessionEvent
from kgents.streaming.bridge import JetStreamEventLog
from kgents.streaming.connection import NatsConnection
from kgents.streaming.consumer import OrderedConsumer, StartPosition
from kgents.streaming.subjects import session_wildcard
from kgents.streaming.topology import EVENTS_STREAM, ensure_streams
from tests.support.nats import NatsServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

WAIT = 5.0


async def store(event_log: JetStreamEventLog, session_id: str, count: int) -> list[int]:
    """Publish ``count`` chunk events of the session; their stream sequences."""
    batch = event_log.batch()
    for index in range(count):
        data = {"turn_id": "turn_t", "text": f"t{index}", "index": index}
        await batch.add(
            SessionEvent(
                session_id=session_id, type="chunk", data=data, msg_id=f"{session_id}:{index}"
            )
        )
    await batch.flush()
    assert batch.first_seq is not None and batch.last_seq is not None
    return list(range(batch.first_seq, batch.last_seq + 1))


def consumer_of(conn: NatsConnection, session_id: str, *, batch: int) -> OrderedConsumer:
    return OrderedConsumer(
        conn,
        stream=EVENTS_STREAM,
        filter_subject=session_wildcard(session_id),
        start=StartPosition(from_start=True),
        batch=batch,
        heartbeat_seconds=1.0,
        outage_seconds=5.0,
    )


async def read_all(consumer: OrderedConsumer, count: int) -> list[int]:
    async with asyncio.timeout(WAIT):
        return [(await consumer.next()).seq for _ in range(count)]


async def collected(ref: "weakref.ref[OrderedConsumer]") -> bool:
    for _ in range(20):  # cancelled subscription tasks need a few loop turns to finish
        await asyncio.sleep(0)
        gc.collect()
        if ref() is None:
            return True
    return False


async def test_a_slow_reader_holds_at_most_one_pull_batch(
    conn: NatsConnection, event_log: JetStreamEventLog, session_id: str
) -> None:
    seqs = await store(event_log, session_id, 300)
    async with consumer_of(conn, session_id, batch=16) as consumer:
        first = await read_all(consumer, 1)
        await asyncio.sleep(0.5)  # the caller is busy; more is stored than one batch

        assert 0 < consumer.buffered <= 16

        assert first + await read_all(consumer, 299) == seqs
        assert consumer.resets == 0


async def test_an_overflowing_inbox_loses_nothing(
    conn: NatsConnection, event_log: JetStreamEventLog, session_id: str
) -> None:
    seqs = await store(event_log, session_id, 200)
    consumer = consumer_of(conn, session_id, batch=32)
    # Cannot happen with the real size (one pull batch plus its statuses): forced here.
    consumer._inbox_size = 5
    async with consumer:
        assert await read_all(consumer, 200) == seqs
        assert consumer.resets > 0


async def test_closing_the_connection_ends_a_waiting_follower(nats: NatsServer) -> None:
    conn = await NatsConnection.connect(nats.url)
    await ensure_streams(conn, replicas=1)
    consumer = consumer_of(conn, new_id("ses"), batch=8)
    await consumer.start()

    async def drain() -> list[int]:
        return [message.seq async for message in consumer]

    reading = asyncio.create_task(drain())
    await asyncio.sleep(0.1)  # waiting inside its pull request
    await conn.close()

    async with asyncio.timeout(WAIT):
        assert await reading == []
    assert consumer.closed
    with pytest.raises(EventsUnavailable):
        await consumer.next()
    await consumer.close()


async def test_a_closed_follower_is_not_kept_alive_by_the_connection(
    conn: NatsConnection, event_log: JetStreamEventLog, session_id: str
) -> None:
    await store(event_log, session_id, 3)
    consumer = consumer_of(conn, session_id, batch=8)
    async with consumer:
        await read_all(consumer, 3)
    ref = weakref.ref(consumer)
    del consumer

    assert await collected(ref)


async def test_a_follower_that_cannot_start_leaves_nothing_behind(conn: NatsConnection) -> None:
    consumer = OrderedConsumer(
        conn,
        stream="no-such-stream",
        filter_subject=session_wildcard(new_id("ses")),
        start=StartPosition(from_start=True),
    )
    with pytest.raises(EventsUnavailable):
        await consumer.start()
    ref = weakref.ref(consumer)
    del consumer

    assert await collected(ref)


async def test_a_start_cancelled_midway_leaves_no_consumer_on_the_server(
    conn: NatsConnection, event_log: JetStreamEventLog, session_id: str
) -> None:
    await store(event_log, session_id, 3)
    # Cancelled at every point of its start, the consumer creation request included: none may
    # stay behind on the server until its inactivity timeout (minutes).
    for steps in range(12):
        consumer = consumer_of(conn, session_id, batch=8)
        starting = asyncio.create_task(consumer.start())
        for _ in range(steps):
            await asyncio.sleep(0)
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await consumer.close()

    async def none_left() -> bool:
        consumers = await conn.js.consumers_info(EVENTS_STREAM)
        return not [c for c in consumers if c.config.filter_subject == session_wildcard(session_id)]

    await eventually(none_left, seconds=WAIT)
