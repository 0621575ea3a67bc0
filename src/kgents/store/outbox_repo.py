"""The usage outbox: rows written with the change they bill, published later by the relay."""

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from kgents.metering.relay import StoredUsageEvent
from kgents.records import UsageEvent
from kgents.store.outbox_sql import OUTBOX, OutboxSql, stored_time_rfc3339
from kgents.store.schema import OutboxRow
from kgents.store.sqlite_thread import WholeWrites
from kgents.store.unavailable import database_unavailable


def add_outbox_events(
    db: AsyncSession | Session, events: Iterable[UsageEvent], *, at: datetime
) -> None:
    """Stage ``events`` in the caller's transaction (async or not), so they commit or vanish
    with it."""
    db.add_all(OutboxRow(**_outbox_values(event, at=at)) for event in events)


def _outbox_values(event: UsageEvent, *, at: datetime) -> dict[str, Any]:
    return {
        "source": event.source,
        "id": event.id,
        "type": event.type,
        "subject": event.subject,
        "time": event.time,
        "data": event.data,
        "created_at": at,
        "sent_at": None,
    }


class SqlOutboxStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._reads = async_sessionmaker(engine, expire_on_commit=False)
        self._engine = engine
        self._sql = OutboxSql(engine.dialect)
        # The relay's claims and marks: each one trip to a SQLite file's writer thread.
        self._whole_writes = WholeWrites(engine)

    async def add(self, events: Sequence[UsageEvent], *, at: datetime) -> None:
        """Store events that bill no other change (``api.request``, ingested events) in their
        own transaction. An event whose ``(source, id)`` is stored already is skipped: storing
        the same batch again (a client's retry) is harmless and changes nothing.

        ``INSERT ... ON CONFLICT (source, id) DO NOTHING``: the database skips a duplicate row
        by row, so it neither raises nor aborts the transaction (on PostgreSQL a failed
        statement would abort it)."""
        if not events:
            return
        pages = self._sql.insert_pages(events, at=at)
        try:
            async with self._whole_writes.writer.begin() as connection:
                for rows, values in pages:
                    await connection.exec_driver_sql(self._sql.insert.sql(rows), values)
        except SQLAlchemyError as exc:
            raise database_unavailable(f"storing usage events: {type(exc).__name__}") from exc

    async def pending(self, *, limit: int) -> Sequence[UsageEvent]:
        """The oldest unsent events."""
        c = OUTBOX.c
        statement = (
            select(c.source, c.id, c.type, c.subject, c.time, c.data)
            .where(c.sent_at.is_(None))
            .order_by(c.created_at)
            .limit(limit)
        )
        async with self._engine.connect() as connection:
            rows = await connection.execute(statement)
            return [
                UsageEvent(
                    id=row.id,
                    source=row.source,
                    type=row.type,
                    subject=row.subject,
                    time=row.time,
                    data=dict(row.data),
                )
                for row in rows
            ]

    async def claim_stored(
        self, *, limit: int, now: datetime, until: datetime
    ) -> list[StoredUsageEvent]:
        """Claim the oldest unsent events that no relay holds (or whose claim ran out by
        ``now``) until ``until``, oldest first, as stored (``data`` as its JSON text, ``time``
        as RFC 3339 text), for the relay to publish as they are. Two relays claiming at once
        never get the same row."""
        params = {"limit": limit, "now": now, "until": until}
        claimed = await self._whole_writes.run(
            lambda connection: list(connection.execute(self._sql.claim, params))
        )
        rows = sorted(claimed, key=lambda row: row[-1])  # RETURNING has no order
        return [
            StoredUsageEvent(
                source=source,
                id=id_,
                type=type_,
                subject=subject,
                time=stored_time_rfc3339(time),
                data_json=data,
            )
            for source, id_, type_, subject, time, data, _created in rows
        ]

    async def release(self, keys: Sequence[tuple[str, str]]) -> None:
        """Give up the claims on ``(source, id)`` pairs not sent (publishing them failed), so
        the next pass of any relay takes them again at once."""
        if not keys:
            return
        rows = self._sql.key_rows(keys)
        await self._whole_writes.run(
            lambda connection: connection.exec_driver_sql(self._sql.release, rows)
        )

    async def mark_sent(self, keys: Sequence[tuple[str, str]], *, at: datetime) -> None:
        """Mark ``(source, id)`` pairs as published (after JetStream acknowledged them)."""
        if not keys:
            return
        rows = self._sql.sent_rows(keys, at=at)
        await self._whole_writes.run(
            lambda connection: connection.exec_driver_sql(self._sql.mark_sent, rows)
        )

    async def backlog(self) -> int:
        async with self._reads() as db:
            count = await db.scalar(
                select(func.count()).select_from(OutboxRow).where(OutboxRow.sent_at.is_(None))
            )
            return count or 0
