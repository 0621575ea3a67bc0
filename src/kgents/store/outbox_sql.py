"""The usage outbox's hot path at driver level: batches stored and marked sent.

``POST /api/v1/events`` stores up to 1,000 events a request and the relay marks hundreds sent
at a time; through the ORM or Core ``executemany`` each row costs more than SQLite or
PostgreSQL spend on it (see ``driver_sql``).
"""

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Table, bindparam, update
from sqlalchemy.engine import Dialect

from kgents.records import UsageEvent
from kgents.store.driver_sql import ROWS_PER_INSERT, MultiRowInsert, bind_processor, compiled
from kgents.store.schema import OutboxRow

OUTBOX: Table = OutboxRow.__table__  # type: ignore[assignment]


class OutboxSql:
    """Parameters and statements of the outbox's batch writes, for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self._bind_time = bind_processor(OUTBOX.c.time.type, dialect)
        self.insert = MultiRowInsert(OUTBOX, dialect, suffix=" ON CONFLICT (source, id) DO NOTHING")
        c = OUTBOX.c
        mark_sent = (
            update(OUTBOX)
            .where(c.source == bindparam("key_source"), c.id == bindparam("key_id"))
            .values(sent_at=bindparam("sent_at"))
        )
        self.mark_sent = compiled(mark_sent, dialect, ["sent_at", "key_source", "key_id"])

    def insert_pages(
        self, events: Sequence[UsageEvent], *, at: datetime
    ) -> list[tuple[int, tuple[Any, ...]]]:
        """``(rows, flat values)`` of the multi-row INSERTs storing ``events``, unsent.

        ``data`` is serialised as SQLAlchemy's JSON type does (``json.dumps``)."""
        created = self._bind_time(at)
        bind_time = self._bind_time
        pages = []
        for first in range(0, len(events), ROWS_PER_INSERT):
            page = events[first : first + ROWS_PER_INSERT]
            values: list[Any] = []
            for event in page:
                values += (
                    event.source,
                    event.id,
                    event.type,
                    event.subject,
                    bind_time(event.time),
                    json.dumps(event.data),
                    created,
                    None,
                )
            pages.append((len(page), tuple(values)))
        return pages

    def sent_rows(self, keys: Sequence[tuple[str, str]], *, at: datetime) -> list[tuple[Any, ...]]:
        """``executemany`` rows of ``mark_sent``, in key order (concurrent relays on
        PostgreSQL then lock rows in the same order)."""
        sent_at = self._bind_time(at)
        return [(sent_at, source, id_) for source, id_ in sorted(set(keys))]
