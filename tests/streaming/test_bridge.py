"""The JetStream event log: publish, batch publish, dedupe, followers, turn read-back."""

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from kgents.ids import new_id
from kgents.sessions.ports import SessionEvent
from kgents.streaming.bridge import JetStreamEventLog
from kgents.streaming.connection import NatsConnection
from kgents.streaming.topology import EVENTS_STREAM
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

WAIT = 5.0


def chunk(session_id: str, index: int, *, turn_id: str | None = None) -> SessionEvent:
    """A chunk event; message ids are stream-wide, so the default turn id is per session."""
    turn_id = turn_id or f"turn_{session_id}"
    return SessionEvent(
        session_id=session_id,
        type="chunk",
        data={"turn_id": turn_id, "text": f"t{index} ", "index": index},
        msg_id=f"{turn_id}:{index}",
    )


async def take(
    events: AsyncIterator[tuple[int, SessionEvent]], n: int
) -> list[tuple[int, SessionEvent]]:
    """The next ``n`` items of ``events``, failing (not hanging) if they do not come."""
    items = []
    async with asyncio.timeout(WAIT):
        async for item in events:
            items.append(item)
            if len(items) == n:
                break
    return items


async def nothing_more(events: AsyncIterator[tuple[int, SessionEvent]], seconds: float) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            await events.__anext__()


async def test_publish_returns_increasing_sequences(
    event_log: JetStreamEventLog, session_id: str
) -> None:
    seqs = [await event_log.publish(chunk(session_id, i)) for i in range(5)]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5
    assert await event_log.last_sequence(session_id) == seqs[-1]
    assert await event_log.last_sequence(new_id("ses")) is None


async def test_a_republished_msg_id_is_stored_once(
    event_log: JetStreamEventLog, conn: NatsConnection, session_id: str
) -> None:
    first = await event_log.publish(chunk(session_id, 0))
    again = await event_log.publish(chunk(session_id, 0))
    assert again == first
    info = await conn.js.stream_info(EVENTS_STREAM, subjects_filter=f"kgent.session.{session_id}.>")
    assert info.state.subjects == {f"kgent.session.{session_id}.chunk": 1}


async def test_batch_publish_and_flush(event_log: JetStreamEventLog, session_id: str) -> None:
    batch = event_log.batch()
    for i in range(1000):
        await batch.add(chunk(session_id, i))
    await batch.flush()
    assert batch.published == 1000
    assert batch.first_seq is not None and batch.last_seq is not None
    assert batch.last_seq - batch.first_seq == 999
    await batch.flush()  # nothing left: harmless
    replay = event_log.follow(session_id, after_seq=None, from_start=True)
    try:
        items = await take(replay, 1000)
    finally:
        await replay.aclose()
    assert [event.data["index"] for _, event in items] == list(range(1000))
    assert [seq for seq, _ in items] == list(range(batch.first_seq, batch.last_seq + 1))


async def test_batch_dedupes_a_replayed_turn(event_log: JetStreamEventLog, session_id: str) -> None:
    for _ in range(2):
        batch = event_log.batch()
        for i in range(10):
            await batch.add(chunk(session_id, i))
        await batch.flush()
    chunks = await event_log.turn_chunks(session_id, f"turn_{session_id}", first_seq=1)
    assert chunks == [f"t{i} " for i in range(10)]


async def test_follow_from_a_sequence_replays_then_follows_live(
    event_log: JetStreamEventLog, session_id: str
) -> None:
    seqs = [await event_log.publish(chunk(session_id, i)) for i in range(6)]
    events = event_log.follow(session_id, after_seq=seqs[2])
    try:
        replayed = await take(events, 3)
        assert [seq for seq, _ in replayed] == seqs[3:]
        assert [e.data["index"] for _, e in replayed] == [3, 4, 5]
        assert all(e.msg_id == f"turn_{session_id}:{e.data['index']}" for _, e in replayed)
        live_seq = await event_log.publish(chunk(session_id, 6))
        [(seq, event)] = await take(events, 1)
        assert seq == live_seq
        assert event.data["index"] == 6
        await nothing_more(events, 0.3)
    finally:
        await events.aclose()


async def test_follow_only_new_events(event_log: JetStreamEventLog, session_id: str) -> None:
    await event_log.publish(chunk(session_id, 0))
    follower = await event_log.open_follower(session_id, after_seq=None)
    try:
        seq = await event_log.publish(chunk(session_id, 1))
        async with asyncio.timeout(WAIT):
            received = await follower.__anext__()
        assert (received.seq, received.event.data["index"]) == (seq, 1)
        assert received.time is not None
    finally:
        await follower.aclose()


async def test_two_followers_each_get_every_event_in_order(
    event_log: JetStreamEventLog, session_id: str
) -> None:
    first = event_log.follow(session_id, after_seq=None, from_start=True)
    second = event_log.follow(session_id, after_seq=None, from_start=True)
    try:
        batch = event_log.batch()
        for i in range(200):
            await batch.add(chunk(session_id, i))
        await batch.flush()
        got_first, got_second = await asyncio.gather(take(first, 200), take(second, 200))
    finally:
        await first.aclose()
        await second.aclose()
    assert [e.data["index"] for _, e in got_first] == list(range(200))
    assert got_first == got_second


async def test_a_follower_sees_only_its_session(
    event_log: JetStreamEventLog, session_id: str
) -> None:
    other = new_id("ses")
    events = event_log.follow(session_id, after_seq=None, from_start=True)
    try:
        for i in range(3):
            await event_log.publish(chunk(other, i))
            await event_log.publish(chunk(session_id, i))
        items = await take(events, 3)
        assert {e.session_id for _, e in items} == {session_id}
        await nothing_more(events, 0.3)
    finally:
        await events.aclose()


async def test_a_slow_follower_loses_nothing(conn: NatsConnection, session_id: str) -> None:
    log = JetStreamEventLog(conn, follow_batch=8, heartbeat_seconds=1.0)
    batch = log.batch()
    for i in range(500):
        await batch.add(chunk(session_id, i))
    await batch.flush()
    follower = await log.open_follower(session_id, after_seq=None, from_start=True)
    seen = []
    try:
        async with asyncio.timeout(WAIT):
            async for received in follower:
                seen.append(received.event.data["index"])
                if len(seen) % 50 == 0:
                    await asyncio.sleep(0.02)  # a slow client
                if len(seen) == 500:
                    break
    finally:
        await follower.aclose()
    assert seen == list(range(500))


async def test_closing_a_follower_deletes_its_consumer(
    event_log: JetStreamEventLog, conn: NatsConnection, session_id: str
) -> None:
    before = (await conn.js.stream_info(EVENTS_STREAM)).state.consumer_count
    follower = await event_log.open_follower(session_id, after_seq=0)
    assert (await conn.js.stream_info(EVENTS_STREAM)).state.consumer_count == before + 1
    await follower.aclose()

    async def deleted() -> bool:
        return (await conn.js.stream_info(EVENTS_STREAM)).state.consumer_count == before

    await eventually(deleted)


async def test_closing_a_follower_ends_its_iteration(
    event_log: JetStreamEventLog, session_id: str
) -> None:
    follower = await event_log.open_follower(session_id, after_seq=None)

    async def drain() -> list[int]:
        return [received.seq async for received in follower]

    reading = asyncio.create_task(drain())
    await asyncio.sleep(0.1)
    await follower.aclose()
    async with asyncio.timeout(WAIT):
        assert await reading == []


async def test_malformed_messages_are_skipped(
    event_log: JetStreamEventLog, conn: NatsConnection, session_id: str
) -> None:
    events = event_log.follow(session_id, after_seq=None, from_start=True)
    try:
        await conn.js.publish(f"kgent.session.{session_id}.chunk", b"garbage")
        await conn.js.publish(
            f"kgent.session.{session_id}.weird", json.dumps({"type": "weird"}).encode()
        )
        seq = await event_log.publish(chunk(session_id, 0))
        [(got, _)] = await take(events, 1)
        assert got == seq
    finally:
        await events.aclose()


async def test_turn_chunks_recount_a_dead_turn(
    event_log: JetStreamEventLog, session_id: str
) -> None:
    old = await event_log.publish(chunk(session_id, 0, turn_id=f"old_{session_id}"))
    first_seq = await event_log.publish(
        SessionEvent(
            session_id=session_id, type="user_message", data={"turn_id": f"dead_{session_id}"}
        )
    )
    assert first_seq > old
    dead = f"dead_{session_id}"
    batch = event_log.batch()
    for i in range(4):
        await batch.add(chunk(session_id, i, turn_id=dead))
        other = new_id("ses")
        await batch.add(chunk(other, i, turn_id=f"dead_{other}"))
    await batch.flush()
    await event_log.publish(chunk(session_id, 0, turn_id=f"next_{session_id}"))
    events = await event_log.read_turn_chunks(session_id, dead, first_seq=first_seq)
    assert [e.data["index"] for e in events] == [0, 1, 2, 3]
    assert await event_log.turn_chunks(session_id, dead, first_seq=first_seq) == [
        "t0 ",
        "t1 ",
        "t2 ",
        "t3 ",
    ]
    assert await event_log.turn_chunks(session_id, "turn_none", first_seq=first_seq) == []
    assert await event_log.turn_chunks(new_id("ses"), dead, first_seq=1) == []
