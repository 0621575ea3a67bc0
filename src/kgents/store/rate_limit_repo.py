"""Per-key request counters: one atomic upsert per request, on SQLite and PostgreSQL alike."""

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from kgents.store.engine import for_writes
from kgents.store.limits_schema import RateWindowRow


def request_count_statement(dialect: str) -> Any:
    """Add one request to the window ``:window`` of the key ``:count_key`` (an atomic upsert)
    and return the window's count."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return (
        insert(RateWindowRow)
        .values(key_id=bindparam("count_key"), window_start=bindparam("window"), count=1)
        .on_conflict_do_update(
            index_elements=["key_id", "window_start"],
            set_={"count": RateWindowRow.count + 1},
        )
        .returning(RateWindowRow.count)
    )


class SqlRequestCounter:
    def __init__(self, engine: AsyncEngine) -> None:
        self._writes = async_sessionmaker(for_writes(engine), expire_on_commit=False)
        self._statement = request_count_statement(engine.dialect.name)

    async def increment(self, key_id: str, *, window_start: datetime) -> int:
        params = {"count_key": key_id, "window": window_start}
        async with self._writes.begin() as db:
            return int(await db.scalar(self._statement, params) or 0)
