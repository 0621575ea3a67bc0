"""The usage outbox on SQLite and PostgreSQL: duplicates are skipped, never an error."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kgents.records import UsageEvent
from kgents.store.outbox_repo import SqlOutboxStore

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
