"""Database URLs, engines and migrations.

Operators write URLs the way they always do (``postgresql://user:pass@host/db``,
``postgresql://user@/db?host=/run/postgresql``, ``sqlite:///path``); the driver is picked here.
"""

import asyncio
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from kgents.config import Settings
from kgents.errors import InvalidInput

_MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_WRITES = "kgents_writes"


def database_url(settings: Settings) -> URL:
    """The async SQLAlchemy URL for ``settings`` (SQLite in the data dir unless configured)."""
    raw = settings.database_url or f"sqlite:///{settings.database_path.resolve()}"
    try:
        url = make_url(raw)
    except Exception as exc:
        raise InvalidInput("KGENTS_DATABASE_URL is not a database URL") from exc
    backend = url.get_backend_name()
    if backend in ("postgres", "postgresql"):
        return url.set(drivername="postgresql+asyncpg")
    if backend == "sqlite":
        return url.set(drivername="sqlite+aiosqlite")
    raise InvalidInput(f"unsupported database {backend!r}: use postgresql:// or sqlite:///")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, emit BEGIN (see ``_sqlite_begin``).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed during a write; busy_timeout makes writers queue instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # A write transaction takes the write lock up front (IMMEDIATE), so one that reads then
    # writes waits for busy_timeout instead of failing on the upgrade. Reads begin deferred:
    # with WAL they neither wait for writers nor hold them up.
    if connection.get_execution_options().get(_WRITES):
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        connection.exec_driver_sql("BEGIN")


def for_writes(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (and pool) for transactions that write."""
    return engine.execution_options(**{_WRITES: True})


def create_engine(url: URL) -> AsyncEngine:
    """An async engine for ``url`` with the settings each backend needs."""
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    # asyncpg takes a Unix socket directory through ``host`` in the query string as libpq does.
    return create_async_engine(url, pool_size=10, max_overflow=20, pool_pre_ping=True)


def alembic_config(url: URL) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS_DIR))
    config.attributes["database_url"] = url
    return config


def upgrade_database(url: URL) -> None:
    """Apply every migration (blocking; call through ``upgrade_database_async`` in async code)."""
    if url.get_backend_name() == "sqlite" and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")


async def upgrade_database_async(url: URL) -> None:
    await asyncio.to_thread(upgrade_database, url)
