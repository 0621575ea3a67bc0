"""Per-key request counters: one atomic upsert per request, on SQLite and PostgreSQL alike."""

from datetime import datetime
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from kgents.store.engine import for_writes
from kgents.store.limits_schema import RateWindowRow


def request_count_statement(dialect: str, key_id: str, window_start: datetime) -> Any:
    """Add one request to the key's window (an atomic upsert) and return the window's count."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return (
        insert(RateWindowRow)
        .values(key_id=key_id, window_start=window_start, count=1)
        .on_conflict_do_update(
            index_elements=["key_id", "window_start"],
            set_={"count": RateWindowRow.count + 1},
        )
        .returning(RateWindowRow.count)
    )


class SqlRequestCounter:
    def __init__(self, engine: AsyncEngine) -> None:
        self._writes = async_sessionmaker(for_writes(engine), expire_on_commit=False)
        self._dialect = engine.dialect.name

    async def increment(self, key_id: str, *, window_start: datetime) -> int:
        statement = request_count_statement(self._dialect, key_id, window_start)
        async with self._writes.begin() as db:
            return int(await db.scalar(statement) or 0)
