"""A PostgreSQL server that cannot be reached, as the domain's ``Unavailable``
(``database_unavailable``, 503) instead of a driver error.

Two ways the server goes away, both translated on the engine so every adapter gets them:

- Opening a connection fails (refused, no socket, starting up or shutting down, too many
  connections): asyncpg raises ``OSError`` unwrapped, which SQLAlchemy passes through as it
  is, or a server error that SQLAlchemy wraps. ``do_connect`` opens the connection itself and
  translates both.
- A connection dies under a statement or a commit (the server restarted): SQLAlchemy marks it
  a disconnect and invalidates it; ``handle_error`` translates. A pre-ping's disconnect is left
  alone, since the pool then reconnects by itself.
"""

import asyncio
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import Dialect, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from kgents.errors import Unavailable

DATABASE_UNAVAILABLE = "database_unavailable"
_CONNECT_FAILURES = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def database_unavailable(reason: str) -> Unavailable:
    return Unavailable(
        f"the database is unreachable ({reason}); try again shortly", code=DATABASE_UNAVAILABLE
    )


def is_database_unavailable(error: BaseException) -> bool:
    return isinstance(error, Unavailable) and error.code == DATABASE_UNAVAILABLE


def translate_connection_errors(engine: AsyncEngine) -> None:
    """Make ``engine`` (PostgreSQL) raise ``Unavailable`` when its server cannot be reached."""
    event.listen(engine.sync_engine, "do_connect", _connect)
    event.listen(engine.sync_engine, "handle_error", _disconnect)


def _connect(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
    dbapi = dialect.loaded_dbapi
    try:
        return dbapi.connect(*cargs, **cparams)
    except (*_CONNECT_FAILURES, dbapi.Error) as exc:
        raise database_unavailable(f"cannot connect: {type(exc).__name__}") from exc


def _disconnect(context: ExceptionContext) -> BaseException | None:
    if (
        context.is_disconnect
        and not context.is_pre_ping
        # A cancelled task closes its connection: that stays a cancellation.
        and isinstance(context.original_exception, Exception)
    ):
        return database_unavailable(f"connection lost: {type(context.original_exception).__name__}")
    return None
