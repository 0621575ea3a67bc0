"""SQLite write transactions whose steps each run whole on the connection's own thread.

aiosqlite runs every DBAPI call (cursor, execute, fetch, close, commit) as a separate job on
the connection's thread and wakes the event loop for each result; through SQLAlchemy's own
adapter a statement cost three or four such trips (``store.sqlite_driver`` makes it one), each
~0.1-0.5 ms of latency on a busy 2-core machine, so a turn start of a dozen statements took
10-15 ms. Here a *step* (a function over a synchronous SQLAlchemy ``Connection``) is one job on
that thread: a transaction of two steps costs two trips, whatever it executes. The synchronous
engine wraps the very same ``sqlite3`` connection, with the same dialect (pysqlite, which
aiosqlite's dialect extends), so column types read and write exactly as through the async
engine, and driver errors arrive as SQLAlchemy's (``OperationalError``, ``IntegrityError``).

The connection is the writer's (``engine.for_writes``): taken from its one-connection pool for
the whole transaction, so this process's writers still queue for it in order.
"""

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar, cast

from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection, StaticPool

from kgents.store.engine import for_writes
from kgents.store.unavailable import translate_operational_errors

T = TypeVar("T")
_SYNC_ENGINE = "kgents_sync_engine"  # key in the pooled connection's ``info``


class ThreadTransaction:
    """One ``BEGIN IMMEDIATE`` transaction on an aiosqlite connection, run step by step on
    its thread (``run``); ``commit`` runs a last step (returning what it returns), commits and
    closes in the same trip."""

    def __init__(self, driver: Any, engine: Engine) -> None:
        self._driver = driver  # the aiosqlite.Connection
        self._engine = engine
        self._connection: Connection | None = None

    async def run(self, step: Callable[[Connection], T]) -> T:
        return cast(T, await self._on_thread(self._run, step))

    async def commit(self, step: Callable[[Connection], T] | None = None) -> T | None:
        return cast(T | None, await self._on_thread(self._commit, step))

    async def close(self) -> None:
        if self._connection is not None:
            await self._on_thread(self._close)

    async def _on_thread(self, function: Callable[..., Any], *args: Any) -> Any:
        # aiosqlite's own queue of jobs for the connection's thread (what ``execute`` and
        # every other method use; SQLAlchemy's aiosqlite adapter reaches it the same way).
        return await self._driver._execute(function, *args)

    # The methods below run on the connection's thread.

    def _begun(self) -> Connection:
        if self._connection is None:
            connection = self._engine.connect()
            self._connection = connection
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        return self._connection

    def _run(self, step: Callable[[Connection], T]) -> T:
        return step(self._begun())

    def _commit(self, step: Callable[[Connection], T] | None) -> T | None:
        connection = self._begun()
        result = None if step is None else step(connection)
        connection.commit()
        self._close()  # in the same trip: ``close`` then has nothing left to do
        return result

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()  # rolls back what was not committed


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


@contextlib.asynccontextmanager
async def thread_transaction(writer: AsyncEngine) -> AsyncIterator[ThreadTransaction]:
    """A ``ThreadTransaction`` on ``writer``'s connection; rolled back unless committed."""
    async with writer.connect() as connection:
        raw = await connection.get_raw_connection()
        transaction = ThreadTransaction(raw.driver_connection, _sync_engine(raw))
        try:
            yield transaction
        finally:
            await transaction.close()


Step = Callable[[Connection], Any]
Outcome = tuple[bool, Any]  # (True, what the step returned) or (False, what it raised)


def _run_steps(engine: Engine, steps: list[Step]) -> list[Outcome]:
    """On the connection's thread: each step in a ``BEGIN IMMEDIATE`` transaction of its own,
    committed when it returns, rolled back when it raises (the others go on)."""
    outcomes: list[Outcome] = []
    for step in steps:
        try:
            with engine.connect() as connection:  # closing rolls back what was not committed
                connection.exec_driver_sql("BEGIN IMMEDIATE")
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
            return cast(list[Outcome], await driver._execute(_run_steps, _sync_engine(raw), steps))


# Each SQLite writer's queue (see ``WholeWrites``); weak, so it goes with its engine.
_QUEUES: "weakref.WeakKeyDictionary[Engine, _WriteQueue]" = weakref.WeakKeyDictionary()


def _queue_of(writer: AsyncEngine) -> _WriteQueue:
    queue = _QUEUES.get(writer.sync_engine)
    if queue is None:
        queue = _QUEUES[writer.sync_engine] = _WriteQueue(writer)
    return queue


class WholeWrites:
    """Write transactions of one step each (a function over a synchronous ``Connection``), run
    whole at once: on a SQLite file one trip to the writer's thread, shared with the other
    steps that wait for it (``_WriteQueue``), each step still in a transaction of its own;
    elsewhere ``run_sync`` in one transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.writer = for_writes(engine)
        # A SQLite file has a writer engine of its own (``for_writes``), whose thread runs it.
        self.on_thread = self.writer is not engine and engine.dialect.name == "sqlite"
        self._queue = _queue_of(self.writer) if self.on_thread else None

    async def run(self, step: Callable[[Connection], T]) -> T:
        if self._queue is not None:
            return await self._queue.run(step)
        async with self.writer.begin() as connection:
            return await connection.run_sync(step)
