"""The outbox relay's loop stops when cancelled, also while the event stream is failing.

The outbox is the real SQL store. The publishers stand in for the JetStream one in the ways it
fails: an outage (``EventsUnavailable`` at once), and the race in which nats-py, on Python 3.11,
swallows a cancellation that arrives with a reply (``asyncio.wait_for``) and then fails.
"""

import asyncio
from collections.abc import Sequence

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kgents.errors import EventsUnavailable
from kgents.metering.relay import OutboxRelay, StoredUsageEvent
from kgents.store.engine import create_engine
from kgents.store.outbox_repo import SqlOutboxStore
from tests.metering.support import T0, sample

pytestmark = pytest.mark.anyio

STOPS_WITHIN_SECONDS = 2.0


class DownPublisher:
    """An event stream that is down: every publish fails at once."""

    def __init__(self) -> None:
        self.attempts = 0
        self.retried = asyncio.Event()

    async def publish_stored(self, events: Sequence[StoredUsageEvent]) -> None:
        self.attempts += 1
        if self.attempts >= 3:
            self.retried.set()
        raise EventsUnavailable("event stream unavailable")


class SwallowingPublisher:
    """A publish whose driver swallows the cancellation and reports a failure instead."""

    def __init__(self) -> None:
        self.waiting = asyncio.Event()

    async def publish_stored(self, events: Sequence[StoredUsageEvent]) -> None:
        self.waiting.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            pass  # as 3.11's wait_for does when the reply and the cancellation arrive together
        raise EventsUnavailable("event stream unavailable: request timed out")


async def stopped_by_cancel(task: asyncio.Task[None]) -> bool:
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=STOPS_WITHIN_SECONDS)
    if not done:
        task.cancel()  # still running: let the test end, and fail it
        await asyncio.wait({task}, timeout=STOPS_WITHIN_SECONDS)
        return False
    return task.cancelled()


async def test_a_cancel_while_retrying_an_outage_stops_the_relay(engine: AsyncEngine) -> None:
    outbox = SqlOutboxStore(engine)
    await outbox.add([sample()], at=T0)
    publisher = DownPublisher()
    relay = OutboxRelay(outbox=outbox, publisher=publisher)
    task = asyncio.create_task(relay.run(poll_seconds=0.05))
    await publisher.retried.wait()  # failed and retried: now in the wait between attempts

    assert await stopped_by_cancel(task)
    assert await outbox.backlog() == 1  # nothing marked sent


async def test_a_cancel_the_publisher_swallowed_still_stops_the_relay(
    engine: AsyncEngine,
) -> None:
    outbox = SqlOutboxStore(engine)
    await outbox.add([sample()], at=T0)
    publisher = SwallowingPublisher()
    relay = OutboxRelay(outbox=outbox, publisher=publisher)
    task = asyncio.create_task(relay.run(poll_seconds=0.05))
    await publisher.waiting.wait()

    assert await stopped_by_cancel(task)
    assert await outbox.backlog() == 1


class RecordingPublisher:
    """Records what it is asked to publish, taking a moment per batch as a real one does."""

    def __init__(self, published: list[str]) -> None:
        self.published = published

    async def publish_stored(self, events: Sequence[StoredUsageEvent]) -> None:
        await asyncio.sleep(0.01)
        self.published.extend(e.id for e in events)


async def test_two_replicas_relaying_at_once_publish_each_row_once(engine: AsyncEngine) -> None:
    await SqlOutboxStore(engine).add([sample() for _ in range(400)], at=T0)
    other = create_engine(engine.url)
    published: list[str] = []
    try:
        relays = [
            OutboxRelay(outbox=SqlOutboxStore(db), publisher=RecordingPublisher(published))
            for db in (engine, other)
        ]

        async def drain(relay: OutboxRelay) -> None:
            while await relay.relay_once(limit=30):
                pass

        await asyncio.gather(*(drain(relay) for relay in relays for _ in range(3)))
    finally:
        await other.dispose()
    assert len(published) == len(set(published)) == 400
    assert await SqlOutboxStore(engine).backlog() == 0
