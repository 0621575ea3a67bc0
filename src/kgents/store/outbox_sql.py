"""The usage outbox's hot path at driver level: batches stored and marked sent, and the events
a turn's start and end stage in their own transactions.

``POST /api/v1/events`` stores up to 1,000 events a request and the relay marks hundreds sent
at a time; through the ORM or Core ``executemany`` each row costs more than SQLite or
PostgreSQL spend on it (see ``driver_sql``).
"""

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    String,
    Table,
    Text,
    bindparam,
    cast,
    null,
    or_,
    select,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.sql.dml import ReturningUpdate

from kgents.metering.cloudevents import format_time
from kgents.records import UsageEvent
from kgents.store.driver_sql import ROWS_PER_INSERT, MultiRowInsert, bind_processor, compiled
from kgents.store.schema import OutboxRow

OUTBOX: Table = OutboxRow.__table__  # type: ignore[assignment]


class OutboxSql:
    """Parameters and statements of the outbox's batch writes, for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self._bind_time = bind_processor(OUTBOX.c.time.type, dialect)
        self.insert = MultiRowInsert(OUTBOX, dialect, suffix=" ON CONFLICT (source, id) DO NOTHING")
        self._insert_billing = MultiRowInsert(OUTBOX, dialect)
        c = OUTBOX.c
        mark_sent = (
            update(OUTBOX)
            .where(c.source == bindparam("key_source"), c.id == bindparam("key_id"))
            .values(sent_at=bindparam("sent_at"))
        )
        self.mark_sent = compiled(mark_sent, dialect, ["sent_at", "key_source", "key_id"])
        # The oldest unsent rows nobody holds, held until ``until``. On PostgreSQL a relay skips
        # the rows another one is claiming at the same moment (SKIP LOCKED) instead of waiting
        # for them; SQLite has one writer at a time and no FOR UPDATE (it is left out there).
        claimable = (
            select(c.source, c.id)
            .where(
                c.sent_at.is_(None),
                or_(c.claimed_until.is_(None), c.claimed_until <= bindparam("now")),
            )
            .order_by(c.created_at)
            .limit(bindparam("limit"))
            .with_for_update(skip_locked=True)
        )
        # ``time`` as the driver returns it (SQLite: text, PostgreSQL: an aware datetime) and
        # ``data`` as text: no per-row JSON decoding or datetime processing in SQLAlchemy.
        self.claim: ReturningUpdate[tuple[str, str, str, str, Any, str, datetime]] = (
            update(OUTBOX)
            .where(tuple_(c.source, c.id).in_(claimable))
            .values(claimed_until=bindparam("until"))
            .returning(
                c.source,
                c.id,
                c.type,
                c.subject,
                type_coerce(c.time, String),
                cast(c.data, Text),
                c.created_at,
            )
        )
        release = (
            update(OUTBOX)
            .where(
                c.source == bindparam("key_source"),
                c.id == bindparam("key_id"),
                c.sent_at.is_(None),
            )
            .values(claimed_until=null())
        )
        self.release = compiled(release, dialect, ["key_source", "key_id"])

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
                    None,  # sent_at
                    None,  # claimed_until
                )
            pages.append((len(page), tuple(values)))
        return pages

    def add_billing(
        self, connection: Connection, events: Sequence[UsageEvent], *, at: datetime
    ) -> None:
        """Store ``events`` in the caller's transaction, which they bill: unlike ``insert``,
        an event stored already is an error (``IntegrityError``) and fails that transaction."""
        for rows, values in self.insert_pages(events, at=at):
            connection.exec_driver_sql(self._insert_billing.sql(rows), values)

    def sent_rows(self, keys: Sequence[tuple[str, str]], *, at: datetime) -> list[tuple[Any, ...]]:
        """``executemany`` rows of ``mark_sent``, in key order (concurrent relays on
        PostgreSQL then lock rows in the same order)."""
        sent_at = self._bind_time(at)
        return [(sent_at, source, id_) for source, id_ in sorted(set(keys))]

    @staticmethod
    def key_rows(keys: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """``executemany`` rows of ``release``, in key order (as ``sent_rows``)."""
        return sorted(set(keys))


_SQLITE_TIME_LENGTH = len("2026-01-02 03:04:05.123456")


def stored_time_rfc3339(value: Any) -> str:
    """A stored ``time`` as the driver returns it, as the codec's time text
    (``cloudevents.format_time``: RFC 3339 UTC with microseconds and ``Z``).

    SQLite holds SQLAlchemy's UTC text (``2026-01-02 03:04:05.123456``), which needs only a
    ``T`` and a ``Z`` to be that text; PostgreSQL's driver returns an aware datetime."""
    if isinstance(value, str):
        if len(value) == _SQLITE_TIME_LENGTH and value[10] == " ":
            return f"{value[:10]}T{value[11:]}Z"
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime):
        raise TypeError(f"not a stored time: {value!r}")
    return format_time(value)
