"""Migrations create exactly the schema the models describe, on SQLite and PostgreSQL."""

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from kgents.config import Settings
from kgents.store import limits_schema, metering_schema  # noqa: F401  (register their tables)
from kgents.store.engine import create_engine, database_url, upgrade_database_async
from kgents.store.schema import Base

pytestmark = pytest.mark.anyio


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection)
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_match_models(database_url: str) -> None:
    url = database_url_for(database_url)
    await upgrade_database_async(url)
    await upgrade_database_async(url)  # idempotent
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(_differences)
    finally:
        await engine.dispose()
    assert differences == []


def database_url_for(raw: str):  # type: ignore[no-untyped-def]
    return database_url(Settings(database_url=raw))
