"""The meter store's ingest hot path: SQL compiled once, sent at driver level."""

import dataclasses
import functools
import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    and_,
    case,
    or_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection

from kgents.errors import InvalidInput
from kgents.metering.rollup import (
    EARLIEST,
    LATEST,
    RollupDelta,
    RollupKey,
    RollupState,
)
from kgents.records import UsageEvent
from kgents.store.driver_sql import ROWS_PER_INSERT, MultiRowInsert, bind_processor, compiled
from kgents.store.metering_schema import (
    EVENTS,
    HOURLY,
    ROLLUPS,
    VALUES,
)

LIMITS = {"source": 256, "id": 256, "type": 128, "subject": 256}


class IngestSql:
    """The ingest hot path at driver level: SQL compiled once, times bound with the column
    type's own processor and data serialised as SQLAlchemy's JSON type does (so rows read back
    through Core and the ORM exactly as if they had written them), and rows sent as multi-row
    ``VALUES`` or ``executemany`` without SQLAlchemy's per-row statement processing, which
    costs more than the database's own work at these batch sizes."""

    def __init__(self, dialect: Dialect) -> None:
        insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
        self.bind_time = bind_processor(EVENTS.c.time.type, dialect)
        # What SQLAlchemy's JSON type sends on both backends (json.dumps), minus NaN and
        # infinities, which PostgreSQL's json refuses and SQLite would store as invalid JSON.
        self.bind_data = functools.partial(json.dumps, allow_nan=False)
        self.insert_events_sql = MultiRowInsert(
            EVENTS, dialect, suffix=" ON CONFLICT (source, id) DO NOTHING RETURNING source, id"
        )
        # Rows below are tuples in table column order; compiled checks the SQL expects that.
        self.upsert_rollups = compiled(_upsert_rollups(insert(ROLLUPS)), dialect, _ROLLUP_FIELDS)
        self.upsert_hourly = compiled(_upsert_rollups(insert(HOURLY)), dialect, _ROLLUP_FIELDS)
        self.insert_values = compiled(
            insert(VALUES).on_conflict_do_nothing(), dialect, _VALUE_FIELDS
        )

    def event_pages(
        self, events: Sequence[UsageEvent], *, ingested_at: datetime
    ) -> list[tuple[int, tuple[Any, ...]]]:
        """Parameters of the multi-row INSERTs for ``events``: ``(rows, flat values)`` pages,
        bound before the transaction opens so a bad event fails fast and holds no lock."""
        stamp = self.bind_time(ingested_at)
        pages = []
        for first in range(0, len(events), ROWS_PER_INSERT):
            page = events[first : first + ROWS_PER_INSERT]
            values: list[Any] = []
            for event in page:
                try:
                    data = self.bind_data(event.data)
                except (TypeError, ValueError) as exc:
                    raise InvalidInput(f"event {event.id!r}: data is not JSON ({exc})") from exc
                values += (
                    event.source,
                    event.id,
                    event.type,
                    event.subject,
                    self.bind_time(event.time),
                    data,
                    stamp,
                )
            pages.append((len(page), tuple(values)))
        return pages

    async def insert_events(
        self, connection: AsyncConnection, pages: Sequence[tuple[int, tuple[Any, ...]]]
    ) -> set[tuple[str, str]]:
        """Insert the events unless present; the ``(source, id)`` of those really inserted."""
        inserted: set[tuple[str, str]] = set()
        for rows, values in pages:
            result = await connection.exec_driver_sql(self.insert_events_sql.sql(rows), values)
            returned: Sequence[Any] = result.all()
            inserted.update((row[0], row[1]) for row in returned)
        return inserted

    async def write_delta(self, connection: AsyncConnection, delta: RollupDelta) -> None:
        """Merge ``delta`` into the minute and hour rollups, in key order (see the module
        docstring)."""
        if delta.states:
            hourly: dict[RollupKey, RollupState] = {}
            merged: set[RollupKey] = set()  # hours whose state is a copy, safe to merge into
            for (meter, subject, group, minute), state in delta.states.items():
                hour = (meter, subject, group, minute - minute % 60)
                existing = hourly.get(hour)
                if existing is None:
                    hourly[hour] = state  # shared with the minute until a second minute comes
                    continue
                if hour not in merged:
                    existing = hourly[hour] = dataclasses.replace(existing)
                    merged.add(hour)
                existing.merge(state)
            for sql, states in ((self.upsert_rollups, delta.states), (self.upsert_hourly, hourly)):
                await connection.exec_driver_sql(sql, _rollup_rows(states))
        if delta.distinct:
            values = [
                (meter, subject, minute, group, value)
                for meter, subject, group, minute, value in sorted(delta.distinct)
            ]
            await connection.exec_driver_sql(self.insert_values, values)


def _rollup_rows(states: dict[RollupKey, RollupState]) -> list[tuple[Any, ...]]:
    return [
        (
            meter,
            subject,
            minute,
            group,
            state.event_count,
            state.value_count,
            state.value_sum,
            state.value_min,
            state.value_max,
            state.latest_us,
            state.latest_value,
        )
        for (meter, subject, group, minute), state in sorted(states.items())
    ]


_ROLLUP_FIELDS = [column.name for column in ROLLUPS.columns]
_VALUE_FIELDS = [column.name for column in VALUES.columns]


def _upsert_rollups(statement: Any) -> Any:
    """``INSERT ... ON CONFLICT DO UPDATE`` merging a window's state into the stored one."""
    new, old = statement.excluded, statement.table.c
    newer = and_(
        new.latest_us.is_not(None),
        or_(
            old.latest_us.is_(None),
            new.latest_us > old.latest_us,
            and_(new.latest_us == old.latest_us, new.latest_value > old.latest_value),
        ),
    )
    return statement.on_conflict_do_update(
        index_elements=["meter", "subject", "window_minute", "group_key"],
        set_={
            "event_count": old.event_count + new.event_count,
            "value_count": old.value_count + new.value_count,
            "value_sum": old.value_sum + new.value_sum,
            "value_min": case(
                (new.value_min.is_(None), old.value_min),
                (or_(old.value_min.is_(None), new.value_min < old.value_min), new.value_min),
                else_=old.value_min,
            ),
            "value_max": case(
                (new.value_max.is_(None), old.value_max),
                (or_(old.value_max.is_(None), new.value_max > old.value_max), new.value_max),
                else_=old.value_max,
            ),
            "latest_us": case((newer, new.latest_us), else_=old.latest_us),
            "latest_value": case((newer, new.latest_value), else_=old.latest_value),
        },
    )


def check_event(event: UsageEvent) -> None:
    """Refuse an event the tables cannot hold, naming it (one cheap test when it is fine)."""
    source, id_, type_, subject, at = event.source, event.id, event.type, event.subject, event.time
    if (
        type(source) is str  # exact types: the fast path for well-formed events
        and type(id_) is str
        and type(type_) is str
        and type(subject) is str
        and 0 < len(source) <= 256
        and 0 < len(id_) <= 256
        and 0 < len(type_) <= 128
        and 0 < len(subject) <= 256
        and isinstance(event.data, dict)
        and isinstance(at, datetime)
        and at.tzinfo is not None
        and at.utcoffset() is not None
        and EARLIEST <= at < LATEST
    ):
        return
    for name, limit in LIMITS.items():
        value = getattr(event, name)
        if not isinstance(value, str) or not value or len(value) > limit:
            raise InvalidInput(
                f"event {event.id!r}: {name} must be a non-empty string of at most {limit} chars"
            )
    if not isinstance(at, datetime) or at.utcoffset() is None:
        raise InvalidInput(f"event {event.id!r}: time must be an aware datetime")
    if not EARLIEST <= at < LATEST:
        raise InvalidInput(f"event {event.id!r}: time must be between years 1000 and 9000")
    raise InvalidInput(f"event {event.id!r}: data must be a JSON object")
