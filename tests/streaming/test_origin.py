"""The reply's own client is fed in process; when it falls behind it reads JetStream from its
last sequence, so it still gets every event once, in order, with its stream sequence."""

import asyncio

import pytest

from kgents.sessions.origin import OriginFollower
from kgents.streaming.bridge import JetStreamEventLog
from kgents.streaming.connection import NatsConnection
from tests.streaming.test_bridge import chunk
from tests.streaming.test_fanout import consumers
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

WAIT = 10.0


async def read_all(follower: OriginFollower, n: int) -> list[tuple[int, int]]:
    """(sequence, chunk index) of the next ``n`` events, read in batches."""
    got: list[tuple[int, int]] = []
    async with asyncio.timeout(WAIT):
        while len(got) < n:
            batch = await follower.next_batch(1.0)
            got.extend((followed.seq, followed.event.data["index"]) for followed in batch)
    return got


async def offered(
    event_log: JetStreamEventLog, follower: OriginFollower, session_id: str, index: int
) -> tuple[int, int]:
    """Publish chunk ``index`` and offer it as the turn would; (sequence, index)."""
    event = chunk(session_id, index)
    seq = await event_log.publish(event)
    follower.offer(event, seq)
    return seq, index


async def test_acknowledged_events_reach_the_client_without_a_consumer(
    event_log: JetStreamEventLog, conn: NatsConnection, session_id: str
) -> None:
    follower = OriginFollower(events=event_log, session_id=session_id, limit=64)
    published = [await offered(event_log, follower, session_id, index) for index in range(5)]
    assert await read_all(follower, 5) == published
    assert follower.in_process
    assert await consumers(conn, session_id) == 0
    await follower.aclose()
    with pytest.raises(StopAsyncIteration):
        await follower.next_batch(0)


async def test_a_client_that_falls_behind_reads_the_rest_from_jetstream(
    event_log: JetStreamEventLog, conn: NatsConnection, session_id: str
) -> None:
    await event_log.publish(chunk(session_id, 99, turn_id="turn_before"))  # not this turn's
    follower = OriginFollower(events=event_log, session_id=session_id, limit=3)
    published = []
    for index in range(10):
        published.append(await offered(event_log, follower, session_id, index))
        if index == 1:
            assert await read_all(follower, 2) == published  # read a little, then not
    assert not follower.in_process
    assert await read_all(follower, 8) == published[2:]  # the buffer, then JetStream
    more = chunk(session_id, 10)
    follower.offer(more, await event_log.publish(more))  # ignored: JetStream delivers it
    assert [index for _, index in await read_all(follower, 1)] == [10]

    async def one_consumer() -> bool:
        # One follows now; one whose create reply a loaded server was slow to send is deleted
        # once that request ends.
        return await consumers(conn, session_id) == 1

    await eventually(one_consumer, seconds=WAIT)
    await follower.aclose()

    async def deleted() -> bool:
        return await consumers(conn, session_id) == 0

    await eventually(deleted)
