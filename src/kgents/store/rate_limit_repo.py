"""Per-key request counters: one atomic upsert per request, on SQLite and PostgreSQL alike."""

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from kgents.store.engine import for_writes
from kgents.store.limits_schema import RateWindowRow


class SqlRequestCounter:
    def __init__(self, engine: AsyncEngine) -> None:
        self._writes = async_sessionmaker(for_writes(engine), expire_on_commit=False)
        self._insert = pg_insert if engine.dialect.name == "postgresql" else sqlite_insert

    async def increment(self, key_id: str, *, window_start: datetime) -> int:
        insert = self._insert(RateWindowRow).values(
            key_id=key_id, window_start=window_start, count=1
        )
        statement = insert.on_conflict_do_update(
            index_elements=["key_id", "window_start"],
            set_={"count": RateWindowRow.count + 1},
        ).returning(RateWindowRow.count)
        async with self._writes.begin() as db:
            count = await db.scalar(statement)
        return int(count or 0)

    async def forget_before(self, moment: datetime) -> None:
        """Drop windows that ended before ``moment``."""
        async with self._writes.begin() as db:
            await db.execute(delete(RateWindowRow).where(RateWindowRow.window_start < moment))
