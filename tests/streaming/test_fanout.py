"""The followers of a session in one process share one consumer; each still gets every event once,
in order, whatever its start position and however slowly it reads."""

import asyncio

import pytest

from kgents.streaming.bridge import JetStreamEventLog
from kgents.streaming.connection import NatsConnection
from kgents.streaming.fanout import SessionFollower
from kgents.streaming.subjects import session_wildcard
from kgents.streaming.topology import EVENTS_STREAM, ensure_streams
from kgents.streaming.wire import ReceivedEvent
from tests.streaming.test_bridge import chunk
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

WAIT = 10.0


async def consumers(conn: NatsConnection, session_id: str) -> int:
    """Consumers on the server following ``session_id``."""
    infos = await conn.js.consumers_info(EVENTS_STREAM)
    return sum(1 for info in infos if info.config.filter_subject == session_wildcard(session_id))


async def read(follower: SessionFollower, n: int) -> list[int]:
    """The stream sequences of the next ``n`` events, read in batches."""
    seqs: list[int] = []
    async with asyncio.timeout(WAIT):
        while len(seqs) < n:
            seqs.extend(received.seq for received in await follower.next_batch(1.0))
    return seqs


async def publish(log: JetStreamEventLog, session_id: str, indexes: range) -> list[int]:
    return [await log.publish(chunk(session_id, i)) for i in indexes]


async def test_followers_of_a_session_share_one_consumer(
    event_log: JetStreamEventLog, conn: NatsConnection, session_id: str
) -> None:
    followers = [await event_log.open_follower(session_id, after_seq=None) for _ in range(5)]
    try:
        assert await consumers(conn, session_id) == 1
        assert event_log.hub.feeds >= 1
        seqs = await publish(event_log, session_id, range(20))
        got = await asyncio.gather(*(read(f, 20) for f in followers))
        assert all(g == seqs for g in got)
        assert all(f.attached for f in followers)
    finally:
        for follower in followers:
            await follower.aclose()

    async def deleted() -> bool:
        return await consumers(conn, session_id) == 0

    await eventually(deleted)


async def test_a_batch_keeps_order_and_ids(event_log: JetStreamEventLog, session_id: str) -> None:
    follower = await event_log.open_follower(session_id, after_seq=None)
    try:
        batch = event_log.batch()
        for i in range(100):
            await batch.add(chunk(session_id, i))
        await batch.flush()
        await asyncio.sleep(0.2)  # let them all arrive: one next_batch takes them together
        events: list[ReceivedEvent] = []
        async with asyncio.timeout(WAIT):
            while len(events) < 100:
                events.extend(await follower.next_batch(1.0))
        assert len(events) == 100
        seqs = [e.seq for e in events]
        assert seqs == sorted(set(seqs))
        assert [e.event.data["index"] for e in events] == list(range(100))
        assert [e.event.msg_id for e in events] == [f"turn_{session_id}:{i}" for i in range(100)]
        assert follower.last_seq == seqs[-1]
        assert await follower.next_batch(0.05) == []
    finally:
        await follower.aclose()


async def test_late_followers_replay_then_join(
    event_log: JetStreamEventLog, conn: NatsConnection, session_id: str
) -> None:
    first = await event_log.open_follower(session_id, after_seq=None)
    late: list[SessionFollower] = []
    try:
        seqs: list[int] = []
        for start in (0, 100, 200):  # read as it comes: ``first`` stays on the shared feed
            seqs += await publish(event_log, session_id, range(start, start + 100))
            assert await read(first, 100) == seqs[start:]
        assert first.attached
        # Just behind the shared consumer: served from its ring of recent events.
        recent = await event_log.open_follower(session_id, after_seq=seqs[-3])
        late.append(recent)
        assert recent.attached
        assert await consumers(conn, session_id) == 1
        # Far behind, or from the start: a replay on a consumer of its own first.
        replay = await event_log.open_follower(session_id, after_seq=seqs[9])
        from_start = await event_log.open_follower(session_id, after_seq=None, from_start=True)
        late += [replay, from_start]
        assert not replay.attached
        assert await read(recent, 2) == seqs[-2:]
        assert await read(replay, 290) == seqs[10:]
        assert await read(from_start, 300) == seqs
        more = await publish(event_log, session_id, range(300, 310))
        for follower in [first, *late]:
            assert await read(follower, 10) == more
        assert all(f.attached for f in [first, *late])
    finally:
        for follower in [first, *late]:
            await follower.aclose()


async def test_a_replay_is_read_on_its_own_consumer_even_when_it_comes_first(
    event_log: JetStreamEventLog, conn: NatsConnection, session_id: str
) -> None:
    """The shared feed starts at the live end whatever its first follower asked for, so a
    replay (however long, however slowly read) never holds back the live followers."""
    seqs = await publish(event_log, session_id, range(300))
    replay = await event_log.open_follower(session_id, after_seq=None, from_start=True)
    assert not replay.attached  # it replays on a consumer of its own
    ahead = await event_log.open_follower(session_id, after_seq=seqs[-1] + 10**9)
    live = await event_log.open_follower(session_id, after_seq=None)
    try:
        assert live.attached and ahead.attached
        more = await publish(event_log, session_id, range(300, 305))
        assert await read(live, 5) == more
        assert await read(ahead, 5) == more  # past the end: from the end
        assert await read(replay, 305) == seqs + more

        async def joined() -> bool:
            return replay.attached and await consumers(conn, session_id) == 1

        await eventually(joined)
    finally:
        for follower in (replay, ahead, live):
            await follower.aclose()


async def test_a_close_cut_short_by_a_cancellation_still_leaves_the_feed(
    conn: NatsConnection, session_id: str
) -> None:
    """An SSE response's follower is closed by a task being cancelled (its client left): the
    close completes all the same, or the follower would stay on its feed for good."""
    await ensure_streams(conn, replicas=1)
    log = JetStreamEventLog(conn, follow_batch=8, heartbeat_seconds=1.0)
    await publish(log, session_id, range(100))
    live = await log.open_follower(session_id, after_seq=None)
    behind = await log.open_follower(session_id, after_seq=0)  # its mailbox fills: it waits
    try:
        assert not behind.attached
        closing = asyncio.create_task(behind.aclose())
        await asyncio.sleep(0)  # the close is under way, waiting for the reader to end
        closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)

        async def left() -> bool:
            return log.hub.followers == 1 and await consumers(conn, session_id) == 1

        await eventually(left)
    finally:
        await live.aclose()
        await behind.aclose()


async def test_a_follower_that_reads_nothing_does_not_hold_up_the_others(
    conn: NatsConnection, session_id: str
) -> None:
    log = JetStreamEventLog(conn, follow_batch=8, heartbeat_seconds=1.0)
    stalled = await log.open_follower(session_id, after_seq=None)
    reader = await log.open_follower(session_id, after_seq=None)
    try:
        batch = log.batch()
        for i in range(200):
            await batch.add(chunk(session_id, i))
        await batch.flush()
        seqs = await read(reader, 200)
        assert len(seqs) == 200
        assert (
            stalled.buffered <= 32
        )  # its mailbox is bounded (4 pull batches); it fell off the shared feed
        assert not stalled.attached
        # Once it reads, it catches up on its own consumer, loses nothing, and joins again.
        got: list[int] = []
        async with asyncio.timeout(WAIT):
            async for received in stalled:
                got.append(received.seq)
                if len(got) == 200:
                    break
        assert got == seqs
        more = await publish(log, session_id, range(200, 205))
        assert await read(stalled, 5) == more
        assert await read(reader, 5) == more

        async def rejoined() -> bool:
            return stalled.attached

        await eventually(rejoined)
    finally:
        await stalled.aclose()
        await reader.aclose()


async def test_wake_returns_an_empty_batch(event_log: JetStreamEventLog, session_id: str) -> None:
    follower = await event_log.open_follower(session_id, after_seq=None)
    try:
        waiting = asyncio.create_task(follower.next_batch(30.0))
        await asyncio.sleep(0.05)
        follower.wake()
        async with asyncio.timeout(WAIT):
            assert await waiting == []
    finally:
        await follower.aclose()
