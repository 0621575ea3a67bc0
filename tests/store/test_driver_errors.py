"""Driver errors never leave the store: a database that cannot serve now is ``Unavailable``
(``database_unavailable``, which the API answers 503 with ``Retry-After``), whichever adapter
ran the statement. ``api/`` imports no database library at all (``tests/test_layers.py``)."""

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from kgents.clock import utc_now
from kgents.errors import Unavailable
from kgents.metering.cloudevents import decode_event
from kgents.store.engine import create_engine, upgrade_database_async
from kgents.store.outbox_repo import SqlOutboxStore
from kgents.store.unavailable import DATABASE_UNAVAILABLE, UnavailableOnTimeoutPool
from tests.openmeter.conftest import cloudevent
from tests.support.database import async_url

pytestmark = pytest.mark.anyio


async def test_a_locked_sqlite_database_is_unavailable(tmp_path: Path) -> None:
    """ "database is locked" (an ``OperationalError``) reached the API as a driver error, which
    only a handler in ``api/`` turned into a 503."""
    path = tmp_path / "kgents.db"
    url = async_url(f"sqlite:///{path}")
    await upgrade_database_async(url)
    engine = create_engine(url)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing
    try:
        async with engine.connect() as connection:
            await connection.exec_driver_sql("PRAGMA busy_timeout=0")  # give up at once
            with pytest.raises(Unavailable) as raised:
                await connection.exec_driver_sql("UPDATE tenants SET name = name")
        assert raised.value.code == DATABASE_UNAVAILABLE
        assert "OperationalError" in str(raised.value)  # the cause, for the log
    finally:
        holder.rollback()
        holder.close()
        await engine.dispose()


async def test_no_free_connection_in_time_is_unavailable(tmp_path: Path) -> None:
    engine = create_async_engine(
        async_url(f"sqlite:///{tmp_path / 'pool.db'}"),
        poolclass=UnavailableOnTimeoutPool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.05,
    )
    try:
        async with engine.connect():
            with pytest.raises(Unavailable) as raised:
                async with engine.connect():
                    pass
        assert raised.value.code == DATABASE_UNAVAILABLE
    finally:
        await engine.dispose()


async def test_usage_events_that_cannot_be_stored_are_unavailable(tmp_path: Path) -> None:
    """The outbox's own failure, which ``POST /api/v1/events`` caught in ``api/``."""
    path = tmp_path / "kgents.db"
    url = async_url(f"sqlite:///{path}")
    await upgrade_database_async(url)
    engine = create_engine(url)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE usage_outbox")
    try:
        event = decode_event(cloudevent(), default_time=utc_now())
        with pytest.raises(Unavailable) as raised:
            await SqlOutboxStore(engine).add([event], at=utc_now())
        assert raised.value.code == DATABASE_UNAVAILABLE
    finally:
        await engine.dispose()
