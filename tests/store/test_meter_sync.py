"""Meter sync by replicas that start together (the workers of ``kgents serve --workers N``),
on SQLite and PostgreSQL (the meter store's own tests run on SQLite only)."""

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from kgents.metering.meters import DEFAULT_METERS
from kgents.store.meter_repo import SqlMeterStore
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

# Transactions waiting for a lock on this database's events table (PostgreSQL).
_WAITING_FOR_EVENTS = (
    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'meter_events'::regclass "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


async def test_replicas_that_sync_at_once_build_each_meter_once(engine: AsyncEngine) -> None:
    """The second sync waits for the first and finds the meters in sync, instead of failing
    on the definitions the first one wrote (which failed that worker's start-up, and uvicorn
    then stopped the whole server)."""
    replicas = [SqlMeterStore(engine, DEFAULT_METERS) for _ in range(2)]
    if engine.dialect.name == "postgresql":
        # An ingest's lock on the events: both syncs queue behind it, then start together.
        async with engine.begin() as ingest:
            await ingest.execute(text("LOCK TABLE meter_events IN ROW EXCLUSIVE MODE"))
            syncs = [asyncio.create_task(replica.sync_meters()) for replica in replicas]

            async def all_waiting() -> bool:
                async with engine.connect() as connection:
                    waiting = await connection.scalar(text(_WAITING_FOR_EVENTS))
                return waiting == len(replicas)

            await eventually(all_waiting, seconds=30)
    else:  # SQLite runs one write transaction at a time
        syncs = [asyncio.create_task(replica.sync_meters()) for replica in replicas]

    built = await asyncio.gather(*syncs)

    assert sorted(slug for slugs in built for slug in slugs) == sorted(
        meter.slug for meter in DEFAULT_METERS
    )
