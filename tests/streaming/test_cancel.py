"""Cancel requests reach every replica's subscription over core NATS."""

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from kgents.errors import InvalidInput
from kgents.ids import new_id
from kgents.streaming.bridge import JetStreamEventLog
from kgents.streaming.connection import NatsConnection
from tests.support.nats import NatsServer

pytestmark = pytest.mark.anyio


async def test_a_cancel_reaches_every_replica(
    nats: NatsServer, event_log: JetStreamEventLog, session_id: str
) -> None:
    other_replica = await NatsConnection.connect(nats.url)
    received: list[tuple[str, str]] = []
    both = asyncio.Event()

    def recorder(name: str) -> Callable[[str], Awaitable[None]]:
        async def record(cancelled: str) -> None:
            received.append((name, cancelled))
            if {replica for replica, _ in received} == {"here", "there"}:
                both.set()

        return record

    here = await event_log.subscribe_cancels(recorder("here"))
    there = await JetStreamEventLog(other_replica).subscribe_cancels(recorder("there"))
    try:
        await event_log.request_cancel(session_id)
        # Generous: a loaded CI machine once needed more than 5 s to deliver both copies.
        async with asyncio.timeout(30):
            await both.wait()
        assert sorted(received) == [("here", session_id), ("there", session_id)], received
    finally:
        await here.unsubscribe()
        await there.unsubscribe()
        await other_replica.close()


async def test_a_failing_callback_does_not_stop_the_subscription(
    event_log: JetStreamEventLog,
) -> None:
    seen: list[str] = []
    second = asyncio.Event()

    async def flaky(session_id: str) -> None:
        seen.append(session_id)
        if len(seen) == 1:
            raise RuntimeError("boom")
        second.set()

    subscription = await event_log.subscribe_cancels(flaky)
    try:
        first_id, second_id = new_id("ses"), new_id("ses")
        await event_log.request_cancel(first_id)
        await event_log.request_cancel(second_id)
        async with asyncio.timeout(30):
            await second.wait()
        assert seen == [first_id, second_id]
    finally:
        await subscription.unsubscribe()


@pytest.mark.parametrize("bad", ["a.b", "*", ">", "a b", "", "x" * 1024])
async def test_hostile_ids_cannot_be_cancelled(event_log: JetStreamEventLog, bad: str) -> None:
    with pytest.raises(InvalidInput):
        await event_log.request_cancel(bad)
