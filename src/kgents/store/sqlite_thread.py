"""SQLite write transactions run whole on the writer connection's own thread.

aiosqlite runs every DBAPI call (cursor, execute, fetch, close, commit) as a separate job on
the connection's thread and wakes the event loop for each result; through SQLAlchemy's own
adapter a statement cost three or four such trips (``store.sqlite_driver`` makes it one), each
~0.1-0.5 ms of latency on a busy 2-core machine. Here a *step* (a function over a synchronous
SQLAlchemy ``Connection``) runs as a whole transaction on that thread: ``BEGIN IMMEDIATE``,
the step, ``COMMIT``, in one job with the other steps waiting for the writer (``_WriteQueue``).
The synchronous engine wraps the very same ``sqlite3`` connection, with the same dialect
(pysqlite, which aiosqlite's dialect extends), so column types read and write exactly as
through the async engine, and driver errors arrive as SQLAlchemy's (``OperationalError``,
``IntegrityError``).

The connection is the writer's (``engine.for_writes``): taken from its one-connection pool for
the whole batch, so the writes of this process that go through SQLAlchemy's own transactions
still queue for it in order.

Another process's write is waited for as ``store.sqlite_busy`` says.
"""

import asyncio
import sqlite3
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar, cast

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection, StaticPool

from kgents.store.engine import for_writes
from kgents.store.sqlite_busy import begin_immediate
from kgents.store.unavailable import translate_operational_errors

T = TypeVar("T")
_SYNC_ENGINE = "kgents_sync_engine"  # key in the pooled connection's ``info``


def _sync_engine(raw: PoolProxiedConnection) -> Engine:
    """A synchronous engine over the pooled connection's ``sqlite3`` connection (cached in the
    pool's ``info`` for that connection, which the pool clears when it reconnects)."""
    engine = raw.info.get(_SYNC_ENGINE)
    if engine is None:
        driver: Any = raw.driver_connection  # aiosqlite.Connection
        connection = driver._conn  # its sqlite3.Connection
        engine = create_engine(
            "sqlite://", creator=lambda: connection, poolclass=StaticPool, pool_reset_on_return=None
        )
        translate_operational_errors(engine)
        raw.info[_SYNC_ENGINE] = engine
    return cast(Engine, engine)


Step = Callable[[Connection], Any]
Outcome = tuple[bool, Any]  # (True, what the step returned) or (False, what it raised)


def _run_steps(engine: Engine, steps: list[Step], driver: sqlite3.Connection) -> list[Outcome]:
    """On the connection's thread: each step in a ``BEGIN IMMEDIATE`` transaction of its own,
    committed when it returns, rolled back when it raises (the others go on)."""
    outcomes: list[Outcome] = []
    for step in steps:
        try:
            with engine.connect() as connection:  # closing rolls back what was not committed
                begin_immediate(driver, partial(connection.exec_driver_sql, "BEGIN IMMEDIATE"))
                result = step(connection)
                connection.commit()
        except Exception as exc:
            outcomes.append((False, exc))
        else:
            outcomes.append((True, result))
    return outcomes


class _WriteQueue:
    """The whole write transactions of one SQLite writer, in batches: the steps that arrive
    while a batch is on the writer's thread go together in the next one, which takes the
    writer once and runs on its thread in one trip.

    Idle, a step goes at once, alone. Under load (a round of turns starting together, the
    turns' ends, the outbox relay) many steps cost one checkout of the writer and one wake-up
    of the event loop instead of one each: the writer is no longer held while the loop,
    busy with other streams, gets back to each caller in turn. A step whose caller was
    cancelled before its batch left is dropped; once sent, it runs to its end."""

    def __init__(self, writer: AsyncEngine) -> None:
        # Weak: the queue is kept by its engine's key in ``_QUEUES``, and the callers that
        # wait on it hold the engine.
        self._writer = weakref.ref(writer)
        self._pending: list[tuple[Step, asyncio.Future[Any]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def run(self, step: Callable[[Connection], T]) -> T:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending.append((step, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._write_pending(), name="sqlite-writes")
        return await future

    async def settled(self) -> None:
        """Return once every step handed over so far is written (or has failed)."""
        runner = self._runner
        if runner is not None and not runner.done():
            await asyncio.wait([runner])

    async def _write_pending(self) -> None:
        try:
            while self._pending:
                batch = [(step, done) for step, done in self._pending if not done.done()]
                self._pending = []
                if batch:
                    await self._write(batch)
        except BaseException:
            for _, future in self._pending:  # cancelled (the loop is closing): nobody waits
                future.cancel()
            self._pending = []
            raise

    async def _write(self, batch: list[tuple[Step, asyncio.Future[Any]]]) -> None:
        try:
            outcomes = await self._on_thread([step for step, _ in batch])
        except Exception as exc:  # no writer, or its thread failed: the whole batch did
            outcomes = [(False, exc)] * len(batch)
        except BaseException:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), (returned, value) in zip(batch, outcomes, strict=True):
            if not future.done():  # its caller may have given up meanwhile
                if returned:
                    future.set_result(value)
                else:
                    future.set_exception(value)

    async def _on_thread(self, steps: list[Step]) -> list[Outcome]:
        writer = self._writer()
        if writer is None:
            raise RuntimeError("the SQLite writer engine is gone")
        async with writer.connect() as connection:
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection  # aiosqlite.Connection: its queue of jobs
            engine = _sync_engine(raw)
            return cast(
                list[Outcome], await driver._execute(_run_steps, engine, steps, driver._conn)
            )


# Each SQLite writer's queue (see ``WholeWrites``); weak, so it goes with its engine.
_QUEUES: "weakref.WeakKeyDictionary[Engine, _WriteQueue]" = weakref.WeakKeyDictionary()


def _queue_of(writer: AsyncEngine) -> _WriteQueue:
    queue = _QUEUES.get(writer.sync_engine)
    if queue is None:
        queue = _QUEUES[writer.sync_engine] = _WriteQueue(writer)
    return queue


async def writes_settled(engine: AsyncEngine) -> None:
    """Return once the whole writes handed to ``engine``'s SQLite writer so far are done. A
    batch outlives the callers that gave up on it, so disposing of the engine first would
    leave its connection checked out of a pool that is gone, never closed."""
    queue = _QUEUES.get(for_writes(engine).sync_engine)
    if queue is not None:
        await queue.settled()


class WholeWrites:
    """Write transactions of one step each (a function over a synchronous ``Connection``), run
    whole at once: on a SQLite file one trip to the writer's thread, shared with the other
    steps that wait for it (``_WriteQueue``), each step still in a transaction of its own;
    elsewhere ``run_sync`` in one transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.writer = for_writes(engine)
        # A SQLite file has a writer engine of its own (``for_writes``), whose thread runs it.
        on_thread = self.writer is not engine and engine.dialect.name == "sqlite"
        self._queue = _queue_of(self.writer) if on_thread else None

    async def run(self, step: Callable[[Connection], T]) -> T:
        if self._queue is not None:
            return await self._queue.run(step)
        async with self.writer.begin() as connection:
            return await connection.run_sync(step)
