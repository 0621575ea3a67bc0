"""SQLAlchemy's aiosqlite dialect with one trip to the connection's thread per statement.

aiosqlite runs each ``sqlite3`` call as a separate job on the connection's own thread, and
SQLAlchemy's adapter cursor makes three or four of them per statement (create the cursor,
execute, fetch the rows, close). Each job costs a queue hand-off, a thread wake-up, a wake-up
of the event loop and, under load, a wait for the GIL. Here the adapter cursor sends one job
that does all of it and then serves ``description``, ``rowcount``, ``lastrowid`` and the rows
from what that job returned. ``sqlite3`` errors raised in the job reach SQLAlchemy exactly as
before (so ``store.unavailable`` translates them); transactions, the connection's
``_execute_mutex`` and server-side cursors are SQLAlchemy's own, unchanged.

Importing this module registers the dialect as ``SQLITE_DRIVERNAME``.
"""

import collections
import sqlite3
from dataclasses import dataclass
from typing import Any

import aiosqlite
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
    SQLiteDialect_aiosqlite,
)
from sqlalchemy.util import EMPTY_DICT
from sqlalchemy.util.concurrency import await_

SQLITE_DRIVERNAME = "sqlite+aiosqlite_onejob"


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one statement's job read from its ``sqlite3`` cursor before closing it."""

    description: Any
    rows: list[Any]
    rowcount: int
    lastrowid: int | None


def _run_statement(
    driver: aiosqlite.Connection, operation: str, parameters: Any, many: bool
) -> _Outcome:
    """One statement, whole, on the connection's thread."""
    cursor = driver._conn.cursor()
    try:
        if many:
            cursor.executemany(operation, parameters)
        else:
            cursor.execute(operation, () if parameters is None else parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return _Outcome(description, rows, cursor.rowcount, cursor.lastrowid)
    finally:
        cursor.close()


class OneJobCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered adapter cursor whose ``execute``/``executemany`` is one job on the thread."""

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_dbapi_connection) -> None:
        # No ``sqlite3`` cursor lives between statements: each job makes and closes its own.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._arraysize = 1  # sqlite3's default
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    async def _async_soft_close(self) -> None:
        """Nothing to close: the job closed its cursor, and the rows stay buffered."""

    def close(self) -> None:
        self._rows.clear()

    def execute(self, operation: Any, parameters: Any = None) -> None:
        self._statement(operation, parameters, many=False)

    def executemany(self, operation: Any, seq_of_parameters: Any) -> None:
        self._statement(operation, seq_of_parameters, many=True)

    def _statement(self, operation: Any, parameters: Any, many: bool) -> None:
        try:
            outcome = await_(self._run(operation, parameters, many))
        except Exception as error:
            self._adapt_connection._handle_exception(error)
        self._description = outcome.description
        self._rows = collections.deque(outcome.rows)
        self._rowcount = outcome.rowcount
        self._lastrowid = outcome.lastrowid

    async def _run(self, operation: Any, parameters: Any, many: bool) -> _Outcome:
        driver: Any = self._connection  # the aiosqlite.Connection
        async with self._adapt_connection._execute_mutex:
            # aiosqlite's own queue of jobs for the thread, as its cursor methods use it.
            outcome: _Outcome = await driver._execute(
                _run_statement, driver, operation, parameters, many
            )
            return outcome


class OneJobConnection(AsyncAdapt_aiosqlite_connection):
    """SQLAlchemy's aiosqlite connection adapter, with ``OneJobCursor`` as its cursor, and no
    trip to the thread for a rollback with no transaction open."""

    __slots__ = ()
    _cursor_cls = OneJobCursor

    def rollback(self) -> None:
        # The pool rolls back every connection it takes back unless SQLAlchemy's own
        # transaction ended first; a transaction run on the thread (``sqlite_thread``) has
        # committed or rolled back there already. Rolling back outside a transaction does
        # nothing in SQLite, so it is skipped, and the writer is free one trip sooner.
        sqlite: sqlite3.Connection | None = self._connection._connection
        if sqlite is not None and not sqlite.in_transaction:
            return
        super().rollback()


class _OneJobDbapi(AsyncAdapt_aiosqlite_dbapi):
    """SQLAlchemy's aiosqlite DBAPI shim, whose connections are ``OneJobConnection``s."""

    def connect(self, *arg: Any, **kw: Any) -> OneJobConnection:
        adapted = super().connect(*arg, **kw)
        return OneJobConnection(self, adapted._connection)


class OneJobSQLiteDialect(SQLiteDialect_aiosqlite):
    driver = "aiosqlite_onejob"
    supports_statement_cache = True  # read from each dialect class's own namespace

    @classmethod
    def import_dbapi(cls) -> AsyncAdapt_aiosqlite_dbapi:
        return _OneJobDbapi(aiosqlite, sqlite3)


registry.register(SQLITE_DRIVERNAME.replace("+", "."), __name__, OneJobSQLiteDialect.__name__)
