"""Exactly-once ingest into the meter store: dedupe, atomicity, values."""

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from kgents.errors import InvalidInput, Unavailable
from kgents.records import UsageEvent
from kgents.store.engine import create_engine
from kgents.store.meter_repo import SqlMeterStore
from tests.metering.support import T0, TEST_METERS, sample, tokens
from tests.support.database import async_url

pytestmark = pytest.mark.anyio


async def total(store: SqlMeterStore, slug: str) -> float | None:
    rows = await store.query(slug)
    assert len(rows) <= 1
    return rows[0].value if rows else None


async def test_ingest_stores_events_and_reports_how_many_were_new(store: SqlMeterStore) -> None:
    assert await store.ingest([tokens(10, 1), tokens(20, 2)]) == 2

    assert await store.event_count() == 2
    assert await total(store, "llm_tokens_in") == 30
    assert await total(store, "llm_tokens_out") == 3


async def test_an_empty_batch_is_a_no_op(store: SqlMeterStore) -> None:
    assert await store.ingest([]) == 0
    assert await store.event_count() == 0


async def test_duplicates_in_one_batch_count_once(store: SqlMeterStore) -> None:
    event = tokens(10, id="turn-1")

    assert await store.ingest([event, event, tokens(99, id="turn-1")]) == 1

    assert await total(store, "llm_tokens_in") == 10  # the first copy wins


async def test_duplicates_across_batches_count_once(store: SqlMeterStore) -> None:
    first = [tokens(10, id="a"), tokens(20, id="b")]
    await store.ingest(first)

    assert await store.ingest([*first, tokens(5, id="c")]) == 1
    assert await store.ingest(first) == 0

    assert await store.event_count() == 3
    assert await total(store, "llm_tokens_in") == 35


async def test_a_batch_larger_than_one_insert_page_is_one_transaction(
    store: SqlMeterStore,
) -> None:
    events = [tokens(1, at=T0 + timedelta(seconds=i), id=f"big-{i:05d}") for i in range(2500)]
    await store.ingest(events[1200:1300])

    assert await store.ingest([*events, *events[:10]]) == 2400

    assert await store.event_count() == 2500
    assert await total(store, "llm_tokens_in") == 2500


async def test_the_same_id_from_another_source_is_another_event(store: SqlMeterStore) -> None:
    assert await store.ingest([sample(1, id="x", source="a"), sample(2, id="x", source="b")]) == 2

    assert await total(store, "sample_sum") == 3


@pytest.fixture
async def second_engine(database_url: str, engine: AsyncEngine) -> AsyncIterator[AsyncEngine]:
    """Another engine on the same database, as a second process would have."""
    other = create_engine(async_url(database_url))
    try:
        yield other
    finally:
        await other.dispose()


async def test_concurrent_ingests_of_overlapping_batches_count_each_event_once(
    store: SqlMeterStore, second_engine: AsyncEngine
) -> None:
    other = SqlMeterStore(second_engine, TEST_METERS)
    events = [tokens(i, at=T0 + timedelta(seconds=i), id=f"e{i}") for i in range(400)]
    batches = [events[start : start + 150] for start in range(0, 400, 50)]  # each event 3 times
    results: list[int] = []

    async def run(target: SqlMeterStore, batch: list[UsageEvent]) -> None:
        results.append(await target.ingest(batch))

    async with anyio.create_task_group() as group:
        for index, batch in enumerate(batches):
            group.start_soon(run, store if index % 2 else other, batch)
            group.start_soon(run, other if index % 2 else store, list(reversed(batch)))

    assert sum(results) == 400
    assert await store.event_count() == 400
    assert await total(store, "llm_tokens_in") == sum(range(400))


async def test_a_failing_batch_stores_nothing(store: SqlMeterStore, engine: AsyncEngine) -> None:
    await store.ingest([tokens(1, id="before")])
    # Fail inside the transaction after the events are in: on the rollup of one subject.
    async with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            await connection.execute(
                text(
                    "CREATE FUNCTION boom() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.subject = 'boom' THEN RAISE EXCEPTION 'boom'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            await connection.execute(
                text(
                    "CREATE TRIGGER boom BEFORE INSERT ON meter_rollups "
                    "FOR EACH ROW EXECUTE FUNCTION boom()"
                )
            )
        else:
            await connection.execute(
                text(
                    "CREATE TRIGGER boom BEFORE INSERT ON meter_rollups "
                    "WHEN NEW.subject = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END"
                )
            )
    batch = [tokens(10, id="a"), tokens(20, id="b", subject="boom"), tokens(30, id="c")]

    with pytest.raises(Unavailable):
        await store.ingest(batch)

    assert await store.event_count() == 1
    assert await total(store, "llm_tokens_in") == 1
    async with engine.begin() as connection:
        on_table = " ON meter_rollups" if engine.dialect.name == "postgresql" else ""
        await connection.execute(text(f"DROP TRIGGER boom{on_table}"))
    # Unavailable means retry: the same batch now goes in whole.
    assert await store.ingest(batch) == 3
    assert await total(store, "llm_tokens_in") == 61


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (
            UsageEvent(id="naive", type="sample", subject="s", time=T0.replace(tzinfo=None)),
            "time must be an aware datetime",
        ),
        (UsageEvent(id="", type="sample", subject="s", time=T0), "id must be a non-empty"),
        (
            UsageEvent(id="far", type="sample", subject="s", time=datetime(9999, 1, 1, tzinfo=UTC)),
            "time must be between years 1000 and 9000",
        ),
        (UsageEvent(id="x", type="sample", subject="", time=T0), "subject must be a non-empty"),
        (UsageEvent(id="x" * 257, type="sample", subject="s", time=T0), "at most 256"),
        (
            UsageEvent(id="obj", type="sample", subject="s", time=T0, data={"v": object()}),
            "data is not JSON",
        ),
        (
            UsageEvent(id="nan", type="sample", subject="s", time=T0, data={"v": float("nan")}),
            "data is not JSON",
        ),
    ],
)
async def test_a_malformed_event_refuses_the_whole_batch(
    store: SqlMeterStore, event: UsageEvent, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        await store.ingest([sample(1), event])

    assert await store.event_count() == 0


async def test_numeric_strings_count_and_other_values_are_skipped(store: SqlMeterStore) -> None:
    await store.ingest(
        [
            sample(2),
            sample("3.5"),
            sample("lots"),
            sample(None),
            sample(True),
            sample({"n": 1}),
        ]
    )

    assert await total(store, "sample_sum") == 5.5
    assert await total(store, "sample_avg") == 2.75
    assert await total(store, "sample_count") == 6  # COUNT counts every event


async def test_a_window_without_usable_values_has_no_row(store: SqlMeterStore) -> None:
    await store.ingest([sample("n/a"), sample(None)])

    for slug in ("sample_sum", "sample_avg", "sample_min", "sample_max", "sample_latest"):
        assert await store.query(slug) == []
    assert await total(store, "sample_count") == 2
    assert await total(store, "sample_unique_count") == 1  # "n/a" is a distinct string


async def test_stored_events_keep_their_content(store: SqlMeterStore, engine: AsyncEngine) -> None:
    event = tokens(7, 3, model="m", at=T0 + timedelta(microseconds=123456), id="kept")

    await store.ingest([event], at=T0 + timedelta(hours=1))

    async with engine.connect() as connection:
        row = (
            await connection.execute(
                text("SELECT source, type, subject, time, data, ingested_at FROM meter_events")
            )
        ).one()
    assert (row.source, row.type, row.subject) == ("kgents-api", "llm.tokens", "tenant-a")
    assert str(row.time).startswith("2026-03-02 00:00:00.123456")
    assert "tokens_in" in str(row.data)
