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

import contextlib
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


class WholeWrites:
    """Write transactions of one step each (a function over a synchronous ``Connection``), run
    whole at once: on a SQLite file one trip to the writer's thread, so the writer is held for
    that trip alone; elsewhere ``run_sync`` in one transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.writer = for_writes(engine)
        # A SQLite file has a writer engine of its own (``for_writes``), whose thread runs it.
        self.on_thread = self.writer is not engine and engine.dialect.name == "sqlite"

    async def run(self, step: Callable[[Connection], T]) -> T:
        if self.on_thread:
            async with thread_transaction(self.writer) as transaction:
                return cast(T, await transaction.commit(step))
        async with self.writer.begin() as connection:
            return await connection.run_sync(step)
