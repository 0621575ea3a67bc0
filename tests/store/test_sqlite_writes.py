"""Whole write transactions on a SQLite file (``sqlite_thread.WholeWrites``): the steps that
wait for the writer share one trip to its thread, each in a transaction of its own."""

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from kgents.errors import Unavailable
from kgents.store import sqlite_busy
from kgents.store.driver_sql import send
from kgents.store.engine import create_engine, for_writes
from kgents.store.sqlite_busy import BUSY_TIMEOUT_MS
from kgents.store.sqlite_thread import WholeWrites, writes_settled
from tests.support.database import async_url

pytestmark = pytest.mark.anyio


def insert(name: str) -> Any:
    def step(connection: Connection) -> str:
        connection.execute(text("INSERT INTO t (name) VALUES (:name)"), {"name": name})
        return name

    return step


async def names(engine: Any) -> list[str]:
    async with engine.connect() as connection:
        return [name for (name,) in await connection.execute(text("SELECT name FROM t"))]


async def test_steps_that_wait_together_share_one_checkout_and_each_commits_alone(
    tmp_path: Path,
) -> None:
    """Twenty steps asked for at once: one checkout of the writer for all of them after the
    first; each caller gets its own step's result or error, and the step that failed
    leaves nothing while the others are stored."""
    engine = create_engine(async_url(f"sqlite:///{tmp_path / 'kgents.db'}"))
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("CREATE TABLE t (name TEXT UNIQUE)")
        checkouts: list[object] = []
        event.listen(for_writes(engine).sync_engine, "checkout", lambda *a: checkouts.append(a))
        writes = WholeWrites(engine)

        def fails(connection: Connection) -> None:
            connection.execute(text("INSERT INTO t (name) VALUES ('half')"))
            insert("n3")(connection)  # n3 is stored by its own step: a unique violation

        steps = [insert(f"n{i}") for i in range(20)]
        steps.insert(10, fails)
        outcomes = await asyncio.gather(*(writes.run(s) for s in steps), return_exceptions=True)

        assert isinstance(outcomes.pop(10), IntegrityError)
        assert outcomes == [f"n{i}" for i in range(20)]
        assert sorted(await names(engine)) == sorted(f"n{i}" for i in range(20))
        assert len(checkouts) <= 2  # today: one; one each (21) before the queue
    finally:
        await engine.dispose()


async def test_a_step_whose_caller_gave_up_before_its_trip_is_not_run(tmp_path: Path) -> None:
    engine = create_engine(async_url(f"sqlite:///{tmp_path / 'kgents.db'}"))
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("CREATE TABLE t (name TEXT UNIQUE)")
        writes = WholeWrites(engine)
        first = asyncio.create_task(writes.run(insert("first")))
        given_up = asyncio.create_task(writes.run(insert("given up")))
        await asyncio.sleep(0)  # both queued; the queue has not sent them yet
        given_up.cancel()
        assert await first == "first"
        assert await writes.run(insert("after")) == "after"
        assert sorted(await names(engine)) == ["after", "first"]
    finally:
        await engine.dispose()


async def test_a_step_outlives_its_caller_and_the_writer_is_free_once_writes_settle(
    tmp_path: Path,
) -> None:
    """A caller that gives up mid-batch does not stop its step; ``writes_settled`` waits for
    it, so the engine is disposed of with the writer's connection back in its pool."""
    engine = create_engine(async_url(f"sqlite:///{tmp_path / 'kgents.db'}"))
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("CREATE TABLE t (name TEXT UNIQUE)")
        on_thread, release = threading.Event(), threading.Event()

        def slow(connection: Connection) -> str:
            on_thread.set()
            release.wait(10)
            return str(insert("slow")(connection))

        caller = asyncio.create_task(WholeWrites(engine).run(slow))
        assert await asyncio.to_thread(on_thread.wait, 10)
        caller.cancel()
        release.set()
        await writes_settled(engine)
        assert for_writes(engine).pool.checkedout() == 0  # type: ignore[attr-defined]
        assert caller.cancelled()
        assert await names(engine) == ["slow"]
    finally:
        await engine.dispose()


@pytest.mark.parametrize(
    ("sql", "raised"),
    [
        ("INSERT INTO t (name) VALUES ('taken')", IntegrityError),  # a unique violation
        ("INSERT INTO missing (name) VALUES ('x')", Unavailable),  # an OperationalError
    ],
)
async def test_a_statement_sent_on_the_thread_fails_as_through_sqlalchemy(
    tmp_path: Path, sql: str, raised: type[Exception]
) -> None:
    """``driver_sql.send`` hands the writer's statements to ``sqlite3`` itself; its errors are
    SQLAlchemy's, translated as the engine translates them, and the step's transaction rolls
    back."""
    engine = create_engine(async_url(f"sqlite:///{tmp_path / 'kgents.db'}"))
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("CREATE TABLE t (name TEXT UNIQUE)")
            await connection.exec_driver_sql("INSERT INTO t (name) VALUES ('taken')")
        writes = WholeWrites(engine)

        def through_sqlalchemy(connection: Connection) -> None:
            connection.exec_driver_sql(sql)

        def sent(connection: Connection) -> None:
            send(connection, "INSERT INTO t (name) VALUES (?)", ("half",))
            send(connection, sql, ())

        for step in (through_sqlalchemy, sent):
            with pytest.raises(raised):
                await writes.run(step)
        assert await names(engine) == ["taken"]
        assert await writes.run(lambda c: send(c, "SELECT name FROM t", ())) == [("taken",)]
    finally:
        await engine.dispose()


HOLD_WRITE = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN IMMEDIATE")
print("writing", flush=True)
sys.stdin.readline()
connection.execute("INSERT INTO t (name) VALUES ('other')")
connection.execute("COMMIT")
"""


async def in_a_transaction(engine: Any, name: str) -> str:
    async with for_writes(engine).begin() as connection:
        await connection.execute(text("INSERT INTO t (name) VALUES (:name)"), {"name": name})
    return name


async def as_a_step(engine: Any, name: str) -> str:
    return await WholeWrites(engine).run(insert(name))


WRITES = pytest.mark.parametrize(
    "write", [as_a_step, in_a_transaction], ids=["step", "transaction"]
)


async def busy_timeout(engine: Any) -> int:
    async with for_writes(engine).connect() as connection:
        return int((await connection.exec_driver_sql("PRAGMA busy_timeout")).scalar_one())


@contextlib.asynccontextmanager
async def another_process_writing(tmp_path: Path) -> AsyncIterator[tuple[Any, Callable[[], Any]]]:
    """An engine on a new file and another process holding that file's write lock; yields the
    engine and ``commit``, which lets the other process commit its row and waits for it."""
    database = tmp_path / "kgents.db"
    engine = create_engine(async_url(f"sqlite:///{database}"))
    async with engine.begin() as connection:
        await connection.exec_driver_sql("CREATE TABLE t (name TEXT UNIQUE)")
    other = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLD_WRITE, str(database),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert other.stdout is not None and other.stdin is not None
    stdin = other.stdin

    async def commit() -> None:
        stdin.write(b"commit\n")
        await stdin.drain()
        assert await asyncio.wait_for(other.wait(), 10) == 0

    try:
        assert await asyncio.wait_for(other.stdout.readline(), 10) == b"writing\n"
        yield engine, commit
    finally:
        if other.returncode is None:
            other.kill()
            await other.wait()
        await writes_settled(engine)
        await engine.dispose()


@WRITES
async def test_a_write_waits_for_another_process_writing_and_goes_once_it_commits(
    tmp_path: Path, write: Any
) -> None:
    """Another process (another ``kgents serve`` worker) holds the write lock: a write (a
    whole step, or a transaction through SQLAlchemy) waits for it, not in SQLite's busy
    handler, goes once it committed, and the writer's connection keeps its busy timeout."""
    async with another_process_writing(tmp_path) as (engine, commit):
        written = asyncio.create_task(write(engine, "mine"))
        await asyncio.sleep(0.3)
        assert not written.done()

        await commit()
        assert await asyncio.wait_for(written, 10) == "mine"
        assert sorted(await names(engine)) == ["mine", "other"]
        assert await busy_timeout(engine) == BUSY_TIMEOUT_MS


@WRITES
async def test_a_write_gives_up_when_another_process_writes_for_longer_than_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: Any
) -> None:
    """As SQLite's busy handler would: after the busy timeout the write fails as a database
    that cannot serve now (503), and nothing of it is stored."""
    monkeypatch.setattr(sqlite_busy, "BUSY_TIMEOUT_MS", 300)
    async with another_process_writing(tmp_path) as (engine, commit):
        with pytest.raises(Unavailable) as refused:
            await asyncio.wait_for(write(engine, "mine"), 10)
        assert refused.value.code == "database_unavailable"

        await commit()
        assert await names(engine) == ["other"]
