"""Database URLs, engines and migrations.

Operators write URLs the way they always do (``postgresql://user:pass@host/db``,
``postgresql://user@/db?host=/run/postgresql``, ``sqlite:///path``); the driver is picked here.
"""

import asyncio
import sqlite3
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext, MigrationInfo
from alembic.script import Script, ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

from kgents.config import Settings
from kgents.errors import InvalidInput, Unavailable
from kgents.store.sqlite_busy import BUSY_TIMEOUT_MS, begin_immediate
from kgents.store.sqlite_driver import SQLITE_DRIVERNAME
from kgents.store.unavailable import (
    UnavailableOnTimeoutPool,
    driver_error,
    translate_connection_errors,
    translate_operational_errors,
)

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
        # aiosqlite, one trip to its thread per statement (``store.sqlite_driver``).
        return url.set(drivername=SQLITE_DRIVERNAME)
    raise InvalidInput(f"unsupported database {backend!r}: use postgresql:// or sqlite:///")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy, not the driver, emit BEGIN (see ``_sqlite_begin``).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers proceed during a write; busy_timeout makes writers queue instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(connection: Any) -> None:
    # A write transaction takes the write lock up front (IMMEDIATE), so one that reads then
    # writes waits for another writer instead of failing on the upgrade (``sqlite_busy``, in
    # one job on the connection's thread). Reads begin deferred: with WAL they neither wait
    # for writers nor hold them up.
    if not connection.get_execution_options().get(_WRITES):
        connection.exec_driver_sql("BEGIN")
        return
    driver = connection.connection.driver_connection  # aiosqlite.Connection
    try:
        await_only(driver._execute(begin_immediate, driver._conn))
    except sqlite3.Error as exc:
        raise driver_error(DBAPIError.instance("BEGIN IMMEDIATE", (), exc, sqlite3.Error)) from exc


def for_writes(engine: AsyncEngine) -> AsyncEngine:
    """The engine for transactions that write.

    On SQLite (a file) that is the engine's writer: a second engine on the same file with a
    single connection, so this process's write transactions queue for it in order on the
    event loop. SQLite admits one writer at a time anyway; without the queue, a writer that
    finds the lock taken sleeps in SQLite's busy handler (1, 2, 5, 10 ms...) and finds out
    late that the lock is free, which cost requests ~10 ms whenever a background write (the
    outbox relay, metering, the end of another turn) was running. ``busy_timeout`` still
    arbitrates between processes. Elsewhere it is the same engine (and pool), marked.
    """
    writer = _WRITERS.get(engine.sync_engine)
    if writer is not None:
        return writer
    return engine.execution_options(**{_WRITES: True})


# Each SQLite engine's writer (see ``for_writes``); weak, so it goes with its engine.
_WRITERS: "weakref.WeakKeyDictionary[Engine, AsyncEngine]" = weakref.WeakKeyDictionary()
# Longest wait for the writer's connection, as long as SQLite's own busy timeout.
_WRITER_TIMEOUT_SECONDS = BUSY_TIMEOUT_MS / 1000


def _sqlite_engine(url: URL, **options: Any) -> AsyncEngine:
    engine = create_async_engine(url, **options)
    event.listen(engine.sync_engine, "connect", _sqlite_connect)
    event.listen(engine.sync_engine, "begin", _sqlite_begin)
    translate_operational_errors(engine.sync_engine)
    return engine


def create_engine(url: URL) -> AsyncEngine:
    """An async engine for ``url`` with the settings each backend needs."""
    if url.get_backend_name() == "sqlite":
        engine = _sqlite_engine(url)
        if url.database and url.database != ":memory:":
            writer = _sqlite_engine(
                url,
                poolclass=UnavailableOnTimeoutPool,
                pool_size=1,
                max_overflow=0,
                pool_timeout=_WRITER_TIMEOUT_SECONDS,
                execution_options={_WRITES: True},
            )
            _WRITERS[engine.sync_engine] = writer

            def dispose_writer(_engine: Engine) -> None:
                # Runs inside ``AsyncEngine.dispose``'s greenlet, so the sync call may await.
                writer.sync_engine.dispose()

            event.listen(engine.sync_engine, "engine_disposed", dispose_writer)
        return engine
    # asyncpg takes a Unix socket directory through ``host`` in the query string as libpq does.
    engine = create_async_engine(
        url,
        poolclass=UnavailableOnTimeoutPool,
        pool_size=10,
        max_overflow=20,
        pool_pre_ping=True,
    )
    translate_connection_errors(engine)
    return engine


def alembic_config(url: URL) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS_DIR))
    config.attributes["database_url"] = url
    return config


@dataclass(frozen=True, slots=True)
class Migration:
    """One Alembic revision: its id and the first line of its docstring."""

    revision: str
    title: str


def _migration(script: Script) -> Migration:
    return Migration(
        revision=script.revision, title=script.doc.splitlines()[0] if script.doc else ""
    )


def upgrade_database(url: URL, *, on_applied: Callable[[Migration], None] | None = None) -> None:
    """Apply every migration (blocking; call through ``upgrade_database_async`` in async code).

    ``on_applied`` is called after each revision is applied (all commit together at the end)."""
    if url.get_backend_name() == "sqlite" and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    config = alembic_config(url)
    if on_applied is not None:
        callback = on_applied

        def report(*, step: MigrationInfo, **_: Any) -> None:
            for script in step.up_revisions:
                if isinstance(script, Script):
                    callback(_migration(script))

        config.attributes["on_version_apply"] = report
    command.upgrade(config, "head")


async def upgrade_database_async(url: URL) -> None:
    await asyncio.to_thread(upgrade_database, url)


async def pending_migrations(url: URL) -> list[Migration]:
    """The migrations ``upgrade_database`` would apply to the database at ``url``, oldest
    first. Raises ``Unavailable`` when the database cannot be read."""
    if url.get_backend_name() == "sqlite" and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            heads = await connection.run_sync(_current_heads)
    except (SQLAlchemyError, OSError) as exc:
        raise Unavailable(
            f"cannot read the database's migration state ({type(exc).__name__})",
            code="database_unavailable",
        ) from exc
    finally:
        await engine.dispose()
    scripts = ScriptDirectory.from_config(alembic_config(url))
    pending = scripts.iterate_revisions("heads", heads or "base")
    return [_migration(script) for script in reversed(list(pending)) if isinstance(script, Script)]


def _current_heads(connection: Connection) -> tuple[str, ...]:
    return tuple(MigrationContext.configure(connection).get_current_heads())
