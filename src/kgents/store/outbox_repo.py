"""The usage outbox: rows written with the change they bill, published later by the relay."""

from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import func, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from kgents.records import UsageEvent
from kgents.store.engine import for_writes
from kgents.store.schema import OutboxRow


def add_outbox_events(db: AsyncSession, events: Iterable[UsageEvent], *, at: datetime) -> None:
    """Stage ``events`` in the caller's transaction, so they commit or vanish with it."""
    db.add_all(
        OutboxRow(
            source=event.source,
            id=event.id,
            type=event.type,
            subject=event.subject,
            time=event.time,
            data=event.data,
            created_at=at,
            sent_at=None,
        )
        for event in events
    )


def usage_event_record(row: OutboxRow) -> UsageEvent:
    return UsageEvent(
        id=row.id,
        source=row.source,
        type=row.type,
        subject=row.subject,
        time=row.time,
        data=dict(row.data),
    )


class SqlOutboxStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._reads = async_sessionmaker(engine, expire_on_commit=False)
        self._writes = async_sessionmaker(for_writes(engine), expire_on_commit=False)

    async def add(self, events: Sequence[UsageEvent], *, at: datetime) -> None:
        """Store events that bill no other change (``api.request``) in their own transaction."""
        async with self._writes.begin() as db:
            add_outbox_events(db, events, at=at)

    async def pending(self, *, limit: int) -> Sequence[UsageEvent]:
        """The oldest unsent events."""
        async with self._reads() as db:
            rows = await db.scalars(
                select(OutboxRow)
                .where(OutboxRow.sent_at.is_(None))
                .order_by(OutboxRow.created_at)
                .limit(limit)
            )
            return [usage_event_record(row) for row in rows]

    async def mark_sent(self, keys: Sequence[tuple[str, str]], *, at: datetime) -> None:
        """Mark ``(source, id)`` pairs as published (after JetStream acknowledged them)."""
        if not keys:
            return
        async with self._writes.begin() as db:
            await db.execute(
                update(OutboxRow)
                .where(tuple_(OutboxRow.source, OutboxRow.id).in_(keys))
                .values(sent_at=at)
            )

    async def backlog(self) -> int:
        async with self._reads() as db:
            count = await db.scalar(
                select(func.count()).select_from(OutboxRow).where(OutboxRow.sent_at.is_(None))
            )
            return count or 0
