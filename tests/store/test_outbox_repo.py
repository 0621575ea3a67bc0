"""The usage outbox on SQLite and PostgreSQL: duplicates are skipped, never an error."""

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from kgents.records import UsageEvent
from kgents.store.engine import create_engine
from kgents.store.outbox_repo import SqlOutboxStore, add_outbox_events

pytestmark = pytest.mark.anyio

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def event(event_id: str, *, tokens: int = 1) -> UsageEvent:
    return UsageEvent(
        id=event_id,
        type="api.request",
        subject="ten_1",
        time=AT,
        data={"tokens": tokens},
    )


async def test_adding_stored_events_again_skips_them_and_stores_the_rest(
    engine: AsyncEngine,
) -> None:
    outbox = SqlOutboxStore(engine)
    await outbox.add([event("a"), event("b")], at=AT)

    await outbox.add([event("b", tokens=99), event("c"), event("d")], at=AT + timedelta(1))

    pending = await outbox.pending(limit=10)
    assert sorted(e.id for e in pending) == ["a", "b", "c", "d"]
    # The first copy stays as it was stored.
    assert next(e for e in pending if e.id == "b").data == {"tokens": 1}
    assert await outbox.backlog() == 4


async def test_duplicates_within_one_batch_are_stored_once(engine: AsyncEngine) -> None:
    outbox = SqlOutboxStore(engine)

    await outbox.add([event("a"), event("a"), event("b")], at=AT)

    assert sorted(e.id for e in await outbox.pending(limit=10)) == ["a", "b"]


async def test_a_sent_event_added_again_is_not_sent_again(engine: AsyncEngine) -> None:
    outbox = SqlOutboxStore(engine)
    await outbox.add([event("a")], at=AT)
    await outbox.mark_sent([(event("a").source, "a")], at=AT)

    await outbox.add([event("a"), event("b")], at=AT)

    assert [e.id for e in await outbox.pending(limit=10)] == ["b"]


async def test_adding_nothing_is_a_no_op(engine: AsyncEngine) -> None:
    outbox = SqlOutboxStore(engine)

    await outbox.add([], at=AT)

    assert await outbox.backlog() == 0


async def claim(outbox: SqlOutboxStore, limit: int, *, now: datetime = AT) -> list[str]:
    claimed = await outbox.claim_stored(limit=limit, now=now, until=now + timedelta(minutes=1))
    return [e.id for e in claimed]


async def test_claimed_stored_is_the_pending_event_as_stored(engine: AsyncEngine) -> None:
    """The relay's read: ``data`` as its JSON text and ``time`` as RFC 3339 UTC text, equal to
    what ``pending`` decodes; rows staged through the ORM (a billed change's transaction) too."""
    outbox = SqlOutboxStore(engine)
    data = {"tokens": 3, "model": 'm\u00fc"\\', "nested": {"a": [1, 2.5, None, True]}}
    whole = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)  # no microseconds
    berlin = datetime(2026, 3, 1, 13, 0, 5, 123456, tzinfo=timezone(timedelta(hours=1)))
    await outbox.add(
        [
            UsageEvent(id="a", type="api.request", subject="ten_1", time=whole, data=data),
            UsageEvent(id="b", type="llm.tokens", subject="ten_\u00e9", time=berlin, data={}),
        ],
        at=AT,
    )
    async with async_sessionmaker(engine)() as db, db.begin():
        staged = UsageEvent(id="c", type="llm.tokens", subject="ten_2", time=berlin, data=data)
        add_outbox_events(db, [staged], at=AT + timedelta(seconds=1))

    claimed = await outbox.claim_stored(limit=10, now=AT, until=AT + timedelta(minutes=1))
    stored = {e.id: e for e in claimed}
    decoded = {e.id: e for e in await outbox.pending(limit=10)}

    assert sorted(stored) == sorted(decoded) == ["a", "b", "c"]
    for key, event in decoded.items():
        row = stored[key]
        assert (row.source, row.id, row.type, row.subject) == (
            event.source,
            event.id,
            event.type,
            event.subject,
        )
        assert json.loads(row.data_json) == event.data
        assert row.time.endswith("Z")
        assert datetime.fromisoformat(row.time.replace("Z", "+00:00")) == event.time
    assert stored["a"].time == "2026-03-01T12:00:05.000000Z"
    assert stored["b"].time == "2026-03-01T12:00:05.123456Z"


async def test_claims_take_the_oldest_unsent_rows_nobody_holds(engine: AsyncEngine) -> None:
    outbox = SqlOutboxStore(engine)
    await outbox.add([event("late")], at=AT + timedelta(seconds=5))
    await outbox.add([event("early"), event("sent")], at=AT)
    await outbox.mark_sent([(event("sent").source, "sent")], at=AT)

    assert await claim(outbox, 1) == ["early"]
    assert await claim(outbox, 10) == ["late"]  # "early" is held
    assert await claim(outbox, 10) == []
    await outbox.release([(event("late").source, "late")])
    assert await claim(outbox, 10) == ["late"]
    # A claim that ran out (its relay died) is taken again.
    assert await claim(outbox, 10, now=AT + timedelta(minutes=2)) == ["early", "late"]


async def test_relays_claiming_at_once_never_share_a_row(engine: AsyncEngine) -> None:
    """Two replicas (two engines) claiming concurrently get disjoint rows that cover all."""
    await SqlOutboxStore(engine).add([event(f"e{i:04d}") for i in range(600)], at=AT)
    other = create_engine(engine.url)
    try:
        replicas = [SqlOutboxStore(engine), SqlOutboxStore(other)]
        batches = await asyncio.gather(*(claim(replicas[i % 2], 25) for i in range(30)))
    finally:
        await other.dispose()
    claimed = [event_id for batch in batches for event_id in batch]
    assert len(claimed) == len(set(claimed)) == 600
