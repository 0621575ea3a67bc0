"""Alembic environment: runs migrations on the async engine given by ``kgents.store.engine``."""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from kgents.store import limits_schema, metering_schema  # noqa: F401  (register their tables)
from kgents.store.engine import create_engine
from kgents.store.schema import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # Set by ``upgrade_database(on_applied=...)``: called after each revision.
        on_version_apply=context.config.attributes.get("on_version_apply", ()),
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_engine(context.config.attributes["database_url"])
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_run_async())
