"""The metering processor against real JetStream and a real meter store (SQLite and PostgreSQL):
exactly once through duplicates, poison events, crashes, replicas and a NATS outage."""

import asyncio
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pytest

from kgents.errors import EventsUnavailable, Unavailable
from kgents.records import UsageEvent
from kgents.store.meter_repo import SqlMeterStore
from kgents.streaming.connection import NatsConnection
from kgents.streaming.topology import USAGE_STREAM
from kgents.streaming.usage import JetStreamUsagePublisher
from kgents.streaming.usage_consumer import (
    METERING_CONSUMER,
    ConsumerSpec,
    UsageConsumer,
    ensure_usage_consumer,
)
from kgents.streaming.wire import encode_usage_event
from tests.metering_flow.support import (
    consumer_idle,
    drain_until,
    processor,
    republish_without_dedupe,
    tokens_event,
)
from tests.support.nats import NatsServer
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


async def test_the_consumer_is_created_once_and_updated_when_its_config_changes(
    conn: NatsConnection,
) -> None:
    assert await ensure_usage_consumer(conn) == "created"
    assert await ensure_usage_consumer(conn) == "unchanged"
    info = await conn.js.consumer_info(USAGE_STREAM, METERING_CONSUMER)
    config = info.config
    assert config.durable_name == METERING_CONSUMER
    assert config.deliver_policy == "all" and config.ack_policy == "explicit"
    assert config.ack_wait == 30.0 and config.max_deliver == 10
    assert config.max_ack_pending == 1000 and config.filter_subject == "kgent.usage.>"
    assert await ensure_usage_consumer(conn, ConsumerSpec(max_deliver=5)) == "updated"
    info = await conn.js.consumer_info(USAGE_STREAM, METERING_CONSUMER)
    assert info.config.max_deliver == 5


async def test_events_are_stored_and_duplicates_published_twice_count_once(
    conn: NatsConnection, store: SqlMeterStore
) -> None:
    events = [tokens_event("tenant-dup", tokens_in=10 + i, tokens_out=i) for i in range(150)]
    publisher = JetStreamUsagePublisher(conn)
    await publisher.publish_usage(events)
    await publisher.publish_usage(events[:20])  # same Nats-Msg-Id: JetStream drops them
    assert await republish_without_dedupe(conn) == 150  # copies only the store can tell apart
    metering = processor(conn, store)

    await drain_until(metering, lambda: consumer_idle(conn))

    assert await store.event_count() == 150
    assert metering.stats.ingested == 150 and metering.stats.duplicates == 150
    assert metering.stats.processed == 300 and metering.stats.parked == 0
    assert metering.stats.batches >= 3  # at most 100 a batch
    totals = await store.totals_by_subject("llm_tokens_in")
    assert totals == {"tenant-dup": sum(10 + i for i in range(150))}
    assert metering.stats.last_pending == 0 and metering.stats.last_lag_seconds is not None


async def test_undecodable_and_invalid_events_are_parked_with_their_error_and_the_rest_flows(
    conn: NatsConnection, store: SqlMeterStore
) -> None:
    good = [tokens_event("tenant-poison", tokens_in=5) for _ in range(10)]
    await JetStreamUsagePublisher(conn).publish_usage(good[:5])
    await conn.js.publish("kgent.usage.llm.tokens", b"{not json")
    await conn.js.publish("kgent.usage.llm.tokens", b'{"specversion": "1.0", "id": "x"}')
    ancient = encode_usage_event(tokens_event("tenant-poison", tokens_in=1, id="ancient"))
    # A CloudEvent in form, but outside the meter store's years: the codec's rules (the same
    # as ingest's) refuse it before it reaches the store.
    await conn.js.publish(ancient.subject, ancient.payload.replace(b"2026-", b"0999-"))
    # What ingest refuses the consumer refuses too (it once took a time without an offset
    # as UTC, and a dead letter's replay an event without specversion).
    naive = encode_usage_event(tokens_event("tenant-poison", tokens_in=1, id="naive"))
    await conn.js.publish(naive.subject, re.sub(rb'(T[0-9:.]+)Z"', rb'\1"', naive.payload))
    versionless = encode_usage_event(tokens_event("tenant-poison", tokens_in=1, id="nover"))
    await conn.js.publish(versionless.subject, versionless.payload.replace(b'"1.0"', b'"0.3"'))
    await JetStreamUsagePublisher(conn).publish_usage(good[5:])
    metering = processor(conn, store)

    await drain_until(metering, lambda: consumer_idle(conn))

    assert await store.event_count() == 10
    assert (await store.totals_by_subject("llm_tokens_in")) == {"tenant-poison": 50}
    letters = await store.dead_letters()
    assert len(letters) == 5 and metering.stats.parked == 5
    assert all(letter.attempts == 1 for letter in letters)  # parked at once: retrying is futile
    assert "not valid JSON" in letters[0].error
    assert letters[0].event["payload"] == "{not json"
    assert "source: is required: a non-empty string" in letters[1].error
    assert "time: must be between the years 1000" in letters[2].error
    assert '"id":"ancient"' in letters[2].event["payload"]
    assert "time: must be an RFC 3339 date-time with an offset" in letters[3].error
    assert 'specversion: must be "1.0"' in letters[4].error


class ChokesOn:
    """The real store, except that a write holding one of ``poison`` fails as a driver
    error would (not as invalid input): the processor cannot tell it is permanent."""

    def __init__(self, store: SqlMeterStore, poison: set[str]) -> None:
        self.store = store
        self.poison = poison
        self.writes = 0

    async def ingest(self, events: Sequence[UsageEvent], *, at: datetime | None = None) -> int:
        self.writes += 1
        if any(event.id in self.poison for event in events):
            raise RuntimeError("driver choked on the event")
        return await self.store.ingest(events, at=at)

    async def park_dead_letter(
        self, *, event: UsageEvent | Mapping[str, Any], error: str, attempts: int, at: datetime
    ) -> int:
        return await self.store.park_dead_letter(event=event, error=error, attempts=attempts, at=at)

    async def dead_letter_count(self) -> int:
        return await self.store.dead_letter_count()


async def test_an_event_that_keeps_failing_is_isolated_redelivered_and_parked_before_max_deliver(
    conn: NatsConnection, store: SqlMeterStore
) -> None:
    events = [tokens_event("tenant-choke", tokens_in=3) for _ in range(20)]
    bad = events[7]
    await JetStreamUsagePublisher(conn).publish_usage(events)
    metering = processor(conn, ChokesOn(store, {bad.id}), spec=ConsumerSpec(max_deliver=4))

    await drain_until(metering, lambda: consumer_idle(conn))

    # The 19 others were stored on the first delivery, one by one after the batch failed.
    assert await store.event_count() == 19
    assert (await store.totals_by_subject("llm_tokens_in")) == {"tenant-choke": 57}
    [letter] = await store.dead_letters()
    assert letter.event["id"] == bad.id
    assert letter.attempts == 3  # max_deliver - 1: one delivery left in case parking fails
    assert "driver choked on the event" in letter.error and "after 3 deliveries" in letter.error
    assert metering.stats.redelivered == 2 and metering.stats.parked == 1


class CrashAfterIngest:
    """Stores the batch, then the process "dies": its NATS connection goes away before any
    ack, nak or term can be sent."""

    def __init__(self, store: SqlMeterStore, conn: NatsConnection) -> None:
        self.store = store
        self.conn = conn

    async def ingest(self, events: Sequence[UsageEvent], *, at: datetime | None = None) -> int:
        await self.store.ingest(events, at=at)
        await self.conn.close()
        raise Crash

    async def park_dead_letter(self, **kwargs: Any) -> int:
        raise AssertionError("nothing is parked")

    async def dead_letter_count(self) -> int:
        return await self.store.dead_letter_count()


class Crash(BaseException):
    """The process dying (as ``SystemExit`` would): not an error the processor handles."""


async def test_a_crash_between_ingest_and_ack_redelivers_and_counts_once(
    nats: NatsServer, conn: NatsConnection, store: SqlMeterStore
) -> None:
    spec = ConsumerSpec(ack_wait_seconds=1.0)  # the redelivery after a crash comes sooner
    events = [tokens_event("tenant-crash", tokens_in=7) for _ in range(30)]
    await JetStreamUsagePublisher(conn).publish_usage(events)
    doomed = await NatsConnection.connect(nats.url)
    first = processor(doomed, CrashAfterIngest(store, doomed), spec=spec)
    with pytest.raises(Crash):
        await first.drain_once()
    assert await store.event_count() == 30  # stored, never acknowledged
    assert not await consumer_idle(conn)

    second = processor(conn, store, spec=spec)
    await drain_until(second, lambda: consumer_idle(conn))

    assert second.stats.processed == 30 and second.stats.duplicates == 30
    assert second.stats.ingested == 0
    assert await store.event_count() == 30
    assert (await store.totals_by_subject("llm_tokens_in")) == {"tenant-crash": 210}


class RecordingStore:
    """The meter store, recording the size of each ingest (one per transaction)."""

    def __init__(self, store: SqlMeterStore) -> None:
        self.store = store
        self.ingests: list[int] = []

    async def ingest(self, events: Sequence[UsageEvent], *, at: datetime | None = None) -> int:
        self.ingests.append(len(events))
        return await self.store.ingest(events, at=at)

    async def park_dead_letter(self, **kwargs: Any) -> int:
        raise AssertionError("nothing is parked")

    async def dead_letter_count(self) -> int:
        return await self.store.dead_letter_count()


async def test_a_backlog_is_fetched_100_at_a_time_and_stored_in_one_transaction(
    conn: NatsConnection, store: SqlMeterStore
) -> None:
    events = [tokens_event("tenant-backlog", tokens_in=2) for _ in range(350)]
    await JetStreamUsagePublisher(conn).publish_usage(events)
    recording = RecordingStore(store)
    metering = processor(conn, recording)

    assert await metering.drain_once() == 350

    assert recording.ingests == [350]  # four fetches (100, 100, 100, 50), one transaction
    assert metering.stats.batches == 4 and metering.stats.last_pending == 0
    assert metering.stats.processed == 350 and metering.stats.ingested == 350
    # Every one acknowledged (the server applies acks on its own queue, so it may lag the flush).
    await eventually(lambda: consumer_idle(conn))
    assert (await store.totals_by_subject("llm_tokens_in")) == {"tenant-backlog": 700}


async def test_a_batch_takes_at_most_five_fetches(
    conn: NatsConnection, store: SqlMeterStore
) -> None:
    events = [tokens_event("tenant-long-backlog", tokens_in=1) for _ in range(620)]
    await JetStreamUsagePublisher(conn).publish_usage(events)
    recording = RecordingStore(store)
    metering = processor(conn, recording)

    await drain_until(metering, lambda: consumer_idle(conn))

    assert recording.ingests == [500, 120]
    assert await store.event_count() == 620


async def test_a_no_wait_fetch_takes_what_is_pending_and_is_answered_at_once(
    conn: NatsConnection, store: SqlMeterStore
) -> None:
    # What the processor's backlog fetches do: no expiry to race on a busy server, and no
    # waiting for events that are not there yet.
    consumer = UsageConsumer(conn)
    await drain_until(processor(conn, store), lambda: consumer_idle(conn))  # earlier tests'
    events = [tokens_event("tenant-no-wait", tokens_in=1) for _ in range(30)]
    await JetStreamUsagePublisher(conn).publish_usage(events)

    # An hour's bound: each fetch can only end by being answered at once.
    taken = await consumer.fetch(batch=100, max_wait=3600.0, no_wait=True)
    nothing = await consumer.fetch(batch=100, max_wait=3600.0, no_wait=True)

    assert sorted(d.event.id for d in taken if d.event) == sorted(e.id for e in events)
    assert nothing == []
    for delivery in taken:
        await delivery.ack()
    await consumer.flush()
    await consumer.close()


async def test_a_crash_after_a_multi_fetch_ingest_redelivers_every_fetch_and_counts_once(
    nats: NatsServer, conn: NatsConnection, store: SqlMeterStore
) -> None:
    spec = ConsumerSpec(ack_wait_seconds=1.0)
    events = [tokens_event("tenant-crash-backlog", tokens_in=3) for _ in range(250)]
    await JetStreamUsagePublisher(conn).publish_usage(events)
    doomed = await NatsConnection.connect(nats.url)
    first = processor(doomed, CrashAfterIngest(store, doomed), spec=spec)
    with pytest.raises(Crash):
        await first.drain_once()
    assert first.stats.batches == 3  # 250 events from three fetches, none acknowledged
    assert await store.event_count() == 250

    second = processor(conn, store, spec=spec)
    await drain_until(second, lambda: consumer_idle(conn))

    assert second.stats.processed == 250 and second.stats.duplicates == 250
    assert (await store.totals_by_subject("llm_tokens_in")) == {"tenant-crash-backlog": 750}


async def test_replicas_share_the_consumer_without_counting_twice(
    nats: NatsServer, conn: NatsConnection, store: SqlMeterStore
) -> None:
    events = [tokens_event("tenant-replicas", tokens_in=1) for _ in range(400)]
    await JetStreamUsagePublisher(conn).publish_usage(events)
    other = await NatsConnection.connect(nats.url)
    replicas = [processor(conn, store), processor(other, store)]
    tasks = [asyncio.create_task(replica.run()) for replica in replicas]
    try:
        await eventually(lambda: consumer_idle(conn), seconds=15)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await other.close()

    assert sum(replica.stats.processed for replica in replicas) == 400
    assert sum(replica.stats.duplicates for replica in replicas) == 0
    assert await store.event_count() == 400
    assert (await store.totals_by_subject("llm_tokens_in")) == {"tenant-replicas": 400}


async def test_metering_rides_out_a_nats_outage(
    nats: NatsServer, conn: NatsConnection, store: SqlMeterStore
) -> None:
    publisher = JetStreamUsagePublisher(conn)
    await publisher.publish_usage([tokens_event("tenant-outage", tokens_in=2) for _ in range(40)])
    metering = processor(conn, store)
    task = asyncio.create_task(metering.run())
    try:
        await eventually(lambda: _count_is(store, 40), seconds=10)
        nats.stop()
        with pytest.raises(EventsUnavailable):
            await UsageConsumer(conn).fetch(batch=1, max_wait=0.1)
        nats.start()
        assert await conn.wait_reconnected(10) or conn.is_connected
        later = [tokens_event("tenant-outage", tokens_in=2) for _ in range(40)]
        await eventually(lambda: _published(publisher, later), seconds=10)
        await eventually(lambda: _count_is(store, 80), seconds=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert (await store.totals_by_subject("llm_tokens_in")) == {"tenant-outage": 160}


async def _count_is(store: SqlMeterStore, count: int) -> bool:
    return await store.event_count() == count


async def _published(publisher: JetStreamUsagePublisher, events: list[UsageEvent]) -> bool:
    try:
        await publisher.publish_usage(events)
    except EventsUnavailable:
        return False
    return True


class DownFor:
    """The real store behind a database outage of ``seconds``: every call fails as the
    store's own driver errors do, then everything works again."""

    def __init__(self, store: SqlMeterStore, seconds: float) -> None:
        self.store = store
        self.until = time.monotonic() + seconds

    def _check(self) -> None:
        if time.monotonic() < self.until:
            raise Unavailable("meter store: ingest failed (OperationalError)")

    async def ingest(self, events: Sequence[UsageEvent], *, at: datetime | None = None) -> int:
        self._check()
        return await self.store.ingest(events, at=at)

    async def park_dead_letter(self, **kwargs: Any) -> int:
        raise AssertionError("nothing is parked in an outage")

    async def dead_letter_count(self) -> int:
        self._check()
        return await self.store.dead_letter_count()


async def test_a_store_outage_longer_than_the_ack_wait_holds_the_batch_without_redeliveries(
    conn: NatsConnection, store: SqlMeterStore
) -> None:
    await JetStreamUsagePublisher(conn).publish_usage(
        [tokens_event("tenant-db-down", tokens_in=4) for _ in range(50)]
    )
    spec = ConsumerSpec(ack_wait_seconds=1.0)
    metering = processor(conn, DownFor(store, seconds=2.5), spec=spec)

    await drain_until(metering, lambda: consumer_idle(conn))

    assert await store.event_count() == 50
    assert metering.stats.store_errors > 1 and metering.stats.parked == 0
    assert metering.stats.redelivered == 0 and metering.stats.batches == 1
    info = await conn.js.consumer_info(USAGE_STREAM, METERING_CONSUMER)
    assert info.delivered.consumer_seq == 50  # each message delivered once: kept alive


async def test_a_fetch_cancelled_mid_batch_hands_its_messages_back_at_once(
    conn: NatsConnection, store: SqlMeterStore
) -> None:
    await JetStreamUsagePublisher(conn).publish_usage(
        [tokens_event("tenant-leaving", tokens_in=1) for _ in range(10)]
    )
    leaving = UsageConsumer(conn)
    # The batch is not full, so the fetch keeps collecting until it is cancelled (a replica
    # shutting down): what it holds must not wait out the 30 s ack wait.
    fetching = asyncio.create_task(leaving.fetch(batch=100, max_wait=5.0))
    await asyncio.sleep(0.5)
    fetching.cancel()
    await asyncio.gather(fetching, return_exceptions=True)
    await leaving.close()

    # 15 s: room for a loaded machine, and still well below the 30 s ack wait.
    await drain_until(processor(conn, store), lambda: _count_is(store, 10), seconds=15)


async def test_what_reaches_an_abandoned_pull_request_is_handed_back_on_close(
    conn: NatsConnection, store: SqlMeterStore
) -> None:
    leaving = UsageConsumer(conn)
    fetching = asyncio.create_task(leaving.fetch(batch=100, max_wait=5.0))
    await asyncio.sleep(0.5)
    fetching.cancel()  # the request stays open on the server until it expires
    await asyncio.gather(fetching, return_exceptions=True)
    await JetStreamUsagePublisher(conn).publish_usage(
        [tokens_event("tenant-abandoned", tokens_in=1) for _ in range(10)]
    )
    await asyncio.sleep(0.3)  # delivered to the abandoned request, queued on our side
    await leaving.close()

    # 15 s: room for a loaded machine, and still well below the 30 s ack wait.
    await drain_until(processor(conn, store), lambda: _count_is(store, 10), seconds=15)
