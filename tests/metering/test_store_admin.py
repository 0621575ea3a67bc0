"""Meter store upkeep: dead letters, rebuilding changed meters, and the migration."""

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from kgents.errors import NotFound
from kgents.metering.meters import DEFAULT_METERS, Meter, MeterAggregation
from kgents.metering.ports import MeterStore
from kgents.store import metering_schema
from kgents.store.engine import alembic_config
from kgents.store.meter_repo import SqlMeterStore
from kgents.store.schema import Base
from tests.metering.support import T0, TEST_METERS, sample, tokens
from tests.support.database import async_url

pytestmark = pytest.mark.anyio

METER_TABLES = {
    "meter_events",
    "meter_rollups",
    "meter_rollup_values",
    "meter_definitions",
    "meter_dead_letters",
}


async def test_the_sql_store_implements_the_port(store: SqlMeterStore) -> None:
    port: MeterStore = store  # checked by mypy

    assert [meter.slug for meter in port.meters] == [meter.slug for meter in TEST_METERS]
    assert port.meter("api_requests").event_type == "api.request"
    with pytest.raises(NotFound):
        port.meter("nope")


async def test_dead_letters_are_kept_listed_and_counted(store: SqlMeterStore) -> None:
    first = await store.park_dead_letter(
        event=tokens(5, id="t1"), error="no such tenant", attempts=5, at=T0
    )
    second = await store.park_dead_letter(
        event={"id": "raw", "weird": float("nan")}, error="bad json", attempts=1, at=T0
    )

    letters = await store.dead_letters()

    assert await store.dead_letter_count() == 2
    assert [letter.id for letter in letters] == [first, second]
    assert letters[0].event["id"] == "t1"
    assert letters[0].event["time"] == "2026-03-02T00:00:00.000000Z"
    assert letters[0].event["data"]["tokens_in"] == 5
    assert (letters[0].error, letters[0].attempts, letters[0].parked_at) == (
        "no such tenant",
        5,
        T0,
    )
    assert "unreadable" in letters[1].event
    assert [letter.id for letter in await store.dead_letters(limit=1, offset=1)] == [second]


async def test_sync_builds_new_meters_from_stored_events(engine: AsyncEngine) -> None:
    before = SqlMeterStore(engine, DEFAULT_METERS)
    assert sorted(await before.sync_meters()) == sorted(meter.slug for meter in DEFAULT_METERS)
    await before.ingest([tokens(3, 1, model="a"), tokens(4, 1, model="b"), sample(9)])
    added = Meter(
        slug="tokens_max",
        event_type="llm.tokens",
        aggregation=MeterAggregation.MAX,
        value_property="$.tokens_in",
    )
    after = SqlMeterStore(engine, [*DEFAULT_METERS, added])

    assert await after.sync_meters() == ["tokens_max"]
    assert await after.sync_meters() == []
    assert [row.value for row in await after.query("tokens_max")] == [4.0]
    assert [row.value for row in await after.query("llm_tokens_in")] == [7.0]


async def test_sync_rebuilds_changed_meters_and_drops_removed_ones(engine: AsyncEngine) -> None:
    store = SqlMeterStore(engine, TEST_METERS)
    await store.sync_meters()
    events = [sample(i, at=T0 + timedelta(minutes=i), region=f"r{i % 2}") for i in range(1, 2001)]
    for start in range(0, len(events), 500):
        await store.ingest(events[start : start + 500])
    changed = Meter(
        slug="sample_sum",
        event_type="sample",
        aggregation=MeterAggregation.SUM,
        value_property="$.value",
        group_by={"region": "$.region"},
        description="descriptions do not matter",
    )
    kept = [meter for meter in TEST_METERS if meter.slug != "sample_max"]
    replaced = [changed if meter.slug == "sample_sum" else meter for meter in kept]
    resynced = SqlMeterStore(engine, replaced)

    assert await resynced.sync_meters() == ["sample_sum"]
    rows = await resynced.query("sample_sum", group_by=["region"])
    assert {row.group_by["region"]: row.value for row in rows} == {
        "r0": float(sum(range(2, 2001, 2))),
        "r1": float(sum(range(1, 2001, 2))),
    }
    # A meter that comes back is rebuilt, since its rollups were dropped while it was gone.
    again = SqlMeterStore(engine, TEST_METERS)
    assert sorted(await again.sync_meters()) == ["sample_max", "sample_sum"]
    assert [row.value for row in await again.query("sample_max")] == [2000.0]


def _schema_differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection)
    return [
        difference
        for difference in compare_metadata(context, Base.metadata)
        if METER_TABLES & set(str(difference).replace("'", " ").split())
    ]


async def test_the_migration_creates_exactly_the_schema(engine: AsyncEngine) -> None:
    assert metering_schema.MeterRollupRow.metadata is Base.metadata
    async with engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        differences = await connection.run_sync(_schema_differences)

    assert tables >= METER_TABLES
    assert differences == []


async def test_the_migration_downgrades_and_upgrades_again(
    database_url: str, engine: AsyncEngine
) -> None:
    config = alembic_config(async_url(database_url))

    await asyncio.to_thread(command.downgrade, config, "0001")
    async with engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    assert not tables & METER_TABLES
    await engine.dispose()

    await asyncio.to_thread(command.upgrade, config, "head")
    store = SqlMeterStore(engine, TEST_METERS)
    assert await store.ingest([sample(1)]) == 1
