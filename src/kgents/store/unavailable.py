"""A database that cannot serve a statement, as the domain's ``Unavailable``
(``database_unavailable``, 503) instead of a driver error: the translation every engine of
``store.engine`` carries, so no caller (``api/`` least of all) ever handles a driver error.

- Opening a PostgreSQL connection fails (refused, no socket, starting up or shutting down, too
  many connections): asyncpg raises ``OSError`` unwrapped, which SQLAlchemy passes through as it
  is, or a server error that SQLAlchemy wraps. ``do_connect`` opens the connection itself and
  translates both.
- A connection dies under a statement or a commit (the server restarted): SQLAlchemy marks it
  a disconnect and invalidates it; ``handle_error`` translates. A pre-ping's disconnect is left
  alone, since the pool then reconnects by itself.
- Any other ``OperationalError`` (SQLite's "database is locked" after its busy timeout, an
  operator cancelling a statement) is a database that cannot serve now: ``handle_error``.
- No pooled connection comes free within the pool's timeout (SQLite's single writer
  connection, PostgreSQL's pool under load): ``UnavailableOnTimeoutPool``.
"""

import asyncio
from typing import Any

import asyncpg
from sqlalchemy import Engine, event
from sqlalchemy.engine import Dialect, ExceptionContext
from sqlalchemy.exc import OperationalError, StatementError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry

from kgents.errors import Unavailable

DATABASE_UNAVAILABLE = "database_unavailable"
_CONNECT_FAILURES = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def database_unavailable(reason: str) -> Unavailable:
    return Unavailable(
        f"the database is busy or unreachable ({reason}); try again shortly",
        code=DATABASE_UNAVAILABLE,
    )


def is_database_unavailable(error: BaseException) -> bool:
    return isinstance(error, Unavailable) and error.code == DATABASE_UNAVAILABLE


def translate_connection_errors(engine: AsyncEngine) -> None:
    """Make ``engine`` (PostgreSQL) raise ``Unavailable`` when its server cannot be reached."""
    event.listen(engine.sync_engine, "do_connect", _connect)
    translate_operational_errors(engine.sync_engine)


def translate_operational_errors(engine: Engine) -> None:
    """Make ``engine`` raise ``Unavailable`` for a lost connection or an ``OperationalError``."""
    event.listen(engine, "handle_error", _translate)


class UnavailableOnTimeoutPool(AsyncAdaptedQueuePool):
    """The async engines' pool, whose wait for a free connection ends in ``Unavailable``."""

    def _do_get(self) -> ConnectionPoolEntry:
        try:
            return super()._do_get()
        except PoolTimeout as exc:
            raise database_unavailable("no connection free in time") from exc


def _connect(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
    dbapi = dialect.loaded_dbapi
    try:
        return dbapi.connect(*cargs, **cparams)
    except (*_CONNECT_FAILURES, dbapi.Error) as exc:
        raise database_unavailable(f"cannot connect: {type(exc).__name__}") from exc


def _translate(context: ExceptionContext) -> BaseException | None:
    original = context.original_exception
    # A cancelled task closes its connection: that stays a cancellation.
    if context.is_pre_ping or not isinstance(original, Exception):
        return None
    if context.is_disconnect:
        return database_unavailable(f"connection lost: {type(original).__name__}")
    return _unavailable(context.sqlalchemy_exception)


def driver_error(error: StatementError) -> Exception:
    """What an engine raises for ``error``, a driver's error that SQLAlchemy wrapped (not a
    lost connection): for a statement sent to the driver without the engine."""
    return _unavailable(error) or error


def _unavailable(error: BaseException | None) -> Unavailable | None:
    if isinstance(error, OperationalError):
        return database_unavailable(f"busy or unreachable: {type(error.orig).__name__}")
    return None
