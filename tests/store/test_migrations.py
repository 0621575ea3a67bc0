"""Migrations create exactly the schema the models describe, on SQLite and PostgreSQL."""

from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from kgents.store import limits_schema, metering_schema  # noqa: F401  (register their tables)
from kgents.store.engine import create_engine, upgrade_database_async
from kgents.store.schema import Base
from tests.support.database import async_url

pytestmark = pytest.mark.anyio


def _differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection)
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_match_models(database_url: str) -> None:
    url = async_url(database_url)
    await upgrade_database_async(url)
    await upgrade_database_async(url)  # idempotent
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(_differences)
    finally:
        await engine.dispose()
    assert differences == []
