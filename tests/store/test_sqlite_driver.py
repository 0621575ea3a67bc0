"""The SQLite driver (``store.sqlite_driver``): each statement is one job on the aiosqlite
connection's thread (SQLAlchemy's own adapter made three or four), with the same results and
the same driver errors."""

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from kgents.store.engine import create_engine, for_writes
from kgents.store.sqlite_thread import WholeWrites
from tests.support.database import async_url

pytestmark = pytest.mark.anyio


async def jobs_of(connection: AsyncConnection) -> list[str]:
    """The names of the functions the connection sends to its thread from now on."""
    driver: Any = (await connection.get_raw_connection()).driver_connection
    queue = driver._execute  # aiosqlite's queue of jobs for its thread
    names: list[str] = []

    async def counted(function: Any, *args: Any, **kwargs: Any) -> Any:
        names.append(function.__name__)
        return await queue(function, *args, **kwargs)

    driver._execute = counted
    return names


async def test_a_statement_is_one_job_on_the_connections_thread(tmp_path: Path) -> None:
    engine = create_engine(async_url(f"sqlite:///{tmp_path / 'kgents.db'}"))
    insert = text("INSERT INTO t (name) VALUES (:name)")
    try:
        async with engine.connect() as connection:
            await connection.exec_driver_sql("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
            jobs = await jobs_of(connection)
            inserted = await connection.execute(insert, {"name": "a"})
            assert (inserted.rowcount, inserted.lastrowid) == (1, 1)
            assert (await connection.execute(insert, [{"name": "b"}, {"name": "c"}])).rowcount == 2
            by_key = text("SELECT id, name FROM t WHERE id = :id")
            assert (await connection.execute(by_key, {"id": 2})).all() == [(2, "b")]
            assert jobs == ["_run_statement"] * 3
    finally:
        await engine.dispose()


async def test_driver_errors_reach_sqlalchemy_as_before(tmp_path: Path) -> None:
    """An error raised on the thread is SQLAlchemy's wrapper of the ``sqlite3`` one, and the
    connection goes on serving after the rollback (a locked database: test_driver_errors)."""
    engine = create_engine(async_url(f"sqlite:///{tmp_path / 'kgents.db'}"))
    insert = text("INSERT INTO t (name) VALUES (:name)")
    try:
        async with engine.connect() as connection:
            await connection.exec_driver_sql("CREATE TABLE t (name TEXT UNIQUE)")
            await connection.execute(insert, {"name": "a"})
            await connection.commit()
            with pytest.raises(IntegrityError) as raised:
                await connection.execute(insert, {"name": "a"})
            assert isinstance(raised.value.orig, sqlite3.IntegrityError)
            await connection.rollback()
            assert (await connection.exec_driver_sql("SELECT count(*) FROM t")).scalar() == 1
    finally:
        await engine.dispose()


async def test_a_transaction_ended_on_the_thread_goes_back_to_the_pool_without_a_trip(
    tmp_path: Path,
) -> None:
    """The pool's rollback of a connection it takes back costs no job when the transaction
    ended on the thread already (committed there), so the writer is free at once."""
    engine = create_engine(async_url(f"sqlite:///{tmp_path / 'kgents.db'}"))
    writer = for_writes(engine)
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("CREATE TABLE t (name TEXT)")
        async with writer.connect() as connection:
            jobs = await jobs_of(connection)  # the writer's one connection, from now on
        await WholeWrites(engine).run(
            lambda sync: sync.exec_driver_sql("INSERT INTO t VALUES ('a')")
        )
        assert jobs == ["_run_steps"]
        async with writer.begin() as connection:  # SQLAlchemy's own transaction: as before
            await connection.exec_driver_sql("INSERT INTO t VALUES ('b')")
            await connection.rollback()
        async with engine.connect() as connection:
            assert (await connection.exec_driver_sql("SELECT name FROM t")).all() == [("a",)]
    finally:
        await engine.dispose()
