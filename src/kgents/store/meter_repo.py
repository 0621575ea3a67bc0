"""The meter store in SQL: exactly-once ingest into minute and hour rollups, and meter queries.

Exactly once: an event's ``(source, id)`` is inserted with ``ON CONFLICT DO NOTHING ... RETURNING``
and only the rows that statement really inserted are added to the rollups, in the same
transaction. A duplicate, in the same batch, a later batch or a concurrent process, finds the key
and adds nothing; a failed batch rolls back keys and rollups together. Rows are written in key
order so concurrent batches on PostgreSQL lock them in the same order and cannot deadlock.

Queries read rollups only: the hourly table when it answers exactly (windows of an hour or more,
bounds on whole hours, a zone of whole-hour offsets), else the minute table. Windows are computed
in SQL with integer arithmetic on ``window_minute`` (semantics in ``kgents.metering.query``):

- MINUTE: the minute itself. HOUR: ``m - (m + offset) % 60``, the UTC minute the window starts.
- DAY: ``(m + offset) / 1440``, the local day number. MONTH: index into the local months of the
  range, by comparing the local minute ``m + offset`` with each month's first minute.

``offset`` is the zone's UTC offset at ``m``: a ``CASE`` over the offset changes in the range.
The ingest hot path sends compiled SQL at driver level (``_IngestSql``); the rest is Core.
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Table,
    and_,
    case,
    delete,
    distinct,
    func,
    literal_column,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kgents.clock import utc_now
from kgents.errors import InvalidInput, NotFound, Unavailable
from kgents.metering.meters import Meter, MeterAggregation, WindowSize
from kgents.metering.ports import DeadLetter, cloudevent
from kgents.metering.query import (
    SHIFT_DAYS,
    SHIFT_MINUTES,
    MeterQuery,
    QueryRow,
    build_query,
    final_value,
    local_day_minute,
    month_starts,
    offset_segments,
    row_order,
    window_bounds,
)
from kgents.metering.rollup import (
    EARLIEST,
    LATEST,
    MeterSet,
    RollupDelta,
    RollupKey,
    RollupState,
    minute_start,
)
from kgents.records import UsageEvent
from kgents.store.metering_schema import (
    MeterDeadLetterRow,
    MeterDefinitionRow,
    MeterEventRow,
    MeterHourlyRollupRow,
    MeterRollupRow,
    MeterRollupValueRow,
)

_EVENTS: Table = MeterEventRow.__table__  # type: ignore[assignment]
_ROLLUPS: Table = MeterRollupRow.__table__  # type: ignore[assignment]
_HOURLY: Table = MeterHourlyRollupRow.__table__  # type: ignore[assignment]
_VALUES: Table = MeterRollupValueRow.__table__  # type: ignore[assignment]
_DEFINITIONS: Table = MeterDefinitionRow.__table__  # type: ignore[assignment]
_DEAD_LETTERS: Table = MeterDeadLetterRow.__table__  # type: ignore[assignment]
_REBUILD_PAGE = 5000
_LIMITS = {"source": 256, "id": 256, "type": 128, "subject": 256}

GroupTuple = tuple[str | None, ...]
ResultKey = tuple[int, str | None, GroupTuple]
"""(bucket, subject when grouped by it, requested group values)."""


def _int(value: int) -> ColumnElement[int]:
    # Integers we computed ourselves, inlined so SELECT and GROUP BY repeat the same text.
    return literal_column(str(int(value)), BigInteger)


def meter_fingerprint(meter: Meter) -> str:
    """A digest of what a meter's rollups depend on (not its name or description)."""
    value_path = meter.value_path()
    shape = {
        "eventType": meter.event_type,
        "aggregation": meter.aggregation.value,
        "valueProperty": value_path.text if value_path else None,
        "groupBy": meter.group_by,
    }
    return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()


class SqlMeterStore:
    """Implements ``kgents.metering.ports.MeterStore`` on SQLite and PostgreSQL."""

    def __init__(
        self,
        engine: AsyncEngine,
        meters: Sequence[Meter],
        *,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._engine = engine
        self._meters = list(meters)
        self._meter_set = MeterSet(self._meters)
        self._clock = clock
        dialect = engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database dialect {dialect!r}")
        self._insert: Callable[[Table], Any] = (
            postgresql.insert if dialect == "postgresql" else sqlite.insert
        )
        self._postgresql = dialect == "postgresql"
        self._sql = _IngestSql(engine.dialect)

    @property
    def meters(self) -> Sequence[Meter]:
        return self._meters

    @contextlib.asynccontextmanager
    async def _database(self, what: str, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """A connection (in a transaction when ``write``) whose driver errors become
        ``Unavailable``: the caller may retry, and nothing of a failed transaction is kept."""
        try:
            async with self._engine.begin() if write else self._engine.connect() as connection:
                yield connection
        except SQLAlchemyError as exc:
            raise Unavailable(f"meter store: {what} failed ({type(exc).__name__})") from exc

    def meter(self, slug: str) -> Meter:
        """The configured meter ``slug``; ``NotFound`` otherwise."""
        found = self._meter_set.meters.get(slug)
        if found is None:
            raise NotFound(f"meter {slug!r} not found")
        return found

    # -- ingest ---------------------------------------------------------------------------

    async def ingest(self, events: Sequence[UsageEvent], *, at: datetime | None = None) -> int:
        """Store the events not stored before and add them to the rollups, all in one
        transaction; return how many were new. Raises ``InvalidInput`` for a malformed event
        and ``Unavailable`` when the database fails; either way nothing is stored."""
        unique: dict[tuple[str, str], UsageEvent] = {}
        for event in events:
            _check_event(event)
            unique.setdefault((event.source, event.id), event)
        if not unique:
            return 0
        ordered = [unique[key] for key in sorted(unique)]
        pages = self._sql.event_pages(ordered, ingested_at=at or self._clock())
        async with self._database("ingest", write=True) as connection:
            inserted = await self._sql.insert_events(connection, pages)
            new = [event for event in ordered if (event.source, event.id) in inserted]
            await self._sql.write_delta(connection, self._meter_set.rollup(new))
        return len(new)

    # -- meter definitions ----------------------------------------------------------------

    async def sync_meters(self, *, at: datetime | None = None) -> list[str]:
        """Rebuild from the stored events the rollups of meters that are new or whose
        definition changed since the last sync, and drop those of meters no longer configured.
        Call at start-up, before ingesting; returns the slugs rebuilt."""
        synced_at = at or self._clock()
        async with self._database("syncing meters", write=True) as connection:
            if self._postgresql:
                # Holds off concurrent ingest so no event slips between the scan and commit.
                await connection.execute(text("LOCK TABLE meter_events IN SHARE MODE"))
            definitions = select(_DEFINITIONS.c.slug, _DEFINITIONS.c.fingerprint)
            known: dict[str, str] = dict((await connection.execute(definitions)).all())
            fingerprints = {meter.slug: meter_fingerprint(meter) for meter in self._meters}
            stale = [m for m in self._meters if known.get(m.slug) != fingerprints[m.slug]]
            gone = [slug for slug in known if slug not in fingerprints]
            dropped = [meter.slug for meter in stale] + gone
            if dropped:
                for table in (_ROLLUPS, _HOURLY, _VALUES):
                    await connection.execute(delete(table).where(table.c.meter.in_(dropped)))
                await connection.execute(
                    delete(_DEFINITIONS).where(_DEFINITIONS.c.slug.in_(dropped))
                )
            if stale:
                await self._rebuild(connection, MeterSet(stale))
                await connection.execute(
                    self._insert(_DEFINITIONS),
                    [
                        {
                            "slug": meter.slug,
                            "fingerprint": fingerprints[meter.slug],
                            "synced_at": synced_at,
                        }
                        for meter in stale
                    ],
                )
        return [meter.slug for meter in stale]

    async def _rebuild(self, connection: AsyncConnection, meters: MeterSet) -> None:
        after: tuple[str, str] | None = None
        columns = (_EVENTS.c.source, _EVENTS.c.id, _EVENTS.c.type, _EVENTS.c.subject)
        while True:
            statement = (
                select(*columns, _EVENTS.c.time, _EVENTS.c.data)
                .where(_EVENTS.c.type.in_(meters.event_types()))
                .order_by(_EVENTS.c.source, _EVENTS.c.id)
                .limit(_REBUILD_PAGE)
            )
            if after is not None:
                statement = statement.where(tuple_(_EVENTS.c.source, _EVENTS.c.id) > after)
            page = (await connection.execute(statement)).all()
            if not page:
                return
            events = [
                UsageEvent(
                    id=r.id,
                    source=r.source,
                    type=r.type,
                    subject=r.subject,
                    time=r.time,
                    data=r.data,
                )
                for r in page
            ]
            await self._sql.write_delta(connection, meters.rollup(events))
            after = (page[-1].source, page[-1].id)

    # -- queries --------------------------------------------------------------------------

    async def query(
        self,
        meter: Meter | str,
        *,
        subjects: Sequence[str] | None = None,
        group_by: Sequence[str] = (),
        from_: datetime | None = None,
        to: datetime | None = None,
        window_size: WindowSize | str | None = None,
        window_time_zone: str = "UTC",
    ) -> list[QueryRow]:
        """Usage of ``meter`` with OpenMeter's semantics (``kgents.metering.query``)."""
        query = build_query(
            self.meter(meter) if isinstance(meter, str) else meter,
            subjects=subjects,
            group_by=group_by,
            from_=from_,
            to=to,
            window_size=window_size,
            window_time_zone=window_time_zone,
        )
        async with self._database("query", write=False) as connection:
            return await _QueryRun(connection, query).rows()

    async def totals_by_subject(self, meter: Meter | str) -> dict[str, float]:
        """Each subject's all-time value of ``meter`` (for reconciliation)."""
        rows = await self.query(meter, group_by=["subject"])
        return {row.subject: row.value for row in rows if row.subject is not None}

    async def event_count(self) -> int:
        async with self._database("counting events", write=False) as connection:
            return (await connection.scalar(select(func.count()).select_from(_EVENTS))) or 0

    # -- dead letters ---------------------------------------------------------------------

    async def park_dead_letter(
        self, *, event: UsageEvent | Mapping[str, Any], error: str, attempts: int, at: datetime
    ) -> int:
        """Keep an event the processor gave up on; returns the dead letter's id."""
        payload = cloudevent(event) if isinstance(event, UsageEvent) else dict(event)
        try:
            stored = json.loads(json.dumps(payload, default=str, allow_nan=False))
        except ValueError:
            stored = {"unreadable": repr(payload)}
        async with self._database("parking a dead letter", write=True) as connection:
            result = await connection.execute(
                self._insert(_DEAD_LETTERS)
                .values(event=stored, error=error, attempts=attempts, parked_at=at)
                .returning(_DEAD_LETTERS.c.id)
            )
            return int(result.scalar_one())

    async def dead_letters(self, *, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Parked events, oldest first."""
        async with self._database("listing dead letters", write=False) as connection:
            result = await connection.execute(
                select(_DEAD_LETTERS).order_by(_DEAD_LETTERS.c.id).limit(limit).offset(offset)
            )
            return [
                DeadLetter(
                    id=row.id,
                    event=dict(row.event),
                    error=row.error,
                    attempts=row.attempts,
                    parked_at=row.parked_at,
                )
                for row in result
            ]

    async def dead_letter_count(self) -> int:
        async with self._database("counting dead letters", write=False) as connection:
            return (await connection.scalar(select(func.count()).select_from(_DEAD_LETTERS))) or 0


class _IngestSql:
    """The ingest hot path at driver level: SQL compiled once, times bound with the column
    type's own processor and data serialised as SQLAlchemy's JSON type does (so rows read back
    through Core and the ORM exactly as if they had written them), and rows sent as multi-row
    ``VALUES`` or ``executemany`` without SQLAlchemy's per-row statement processing, which
    costs more than the database's own work at these batch sizes."""

    _PAGE = 1000  # rows per multi-row INSERT: 7,000 parameters, under both backends' limits

    def __init__(self, dialect: Dialect) -> None:
        insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
        self.numbered = dialect.paramstyle in ("numeric", "numeric_dollar")
        self.bind_time = _processor(_EVENTS.c.time.type, dialect)
        # What SQLAlchemy's JSON type sends on both backends (json.dumps), minus NaN and
        # infinities, which PostgreSQL's json refuses and SQLite would store as invalid JSON.
        self.bind_data = functools.partial(json.dumps, allow_nan=False)
        self.events_columns = ", ".join(column.name for column in _EVENTS.columns)
        # Rows below are tuples in table column order; _compiled checks the SQL expects that.
        self.upsert_rollups = _compiled(_upsert_rollups(insert(_ROLLUPS)), dialect, _ROLLUP_FIELDS)
        self.upsert_hourly = _compiled(_upsert_rollups(insert(_HOURLY)), dialect, _ROLLUP_FIELDS)
        self.insert_values = _compiled(
            insert(_VALUES).on_conflict_do_nothing(), dialect, _VALUE_FIELDS
        )
        self._events_sql: dict[int, str] = {}

    def events_sql(self, rows: int) -> str:
        sql = self._events_sql.get(rows)
        if sql is None:
            width = len(_EVENTS.columns)
            if self.numbered:
                groups = (
                    "(" + ", ".join(f"${row * width + col + 1}" for col in range(width)) + ")"
                    for row in range(rows)
                )
            else:
                groups = ("(" + ", ".join("?" * width) + ")" for _ in range(rows))
            # Only column names and placeholders go into the text; values are parameters.
            head = f"INSERT INTO meter_events ({self.events_columns}) VALUES "  # noqa: S608
            sql = self._events_sql[rows] = (
                head
                + ", ".join(groups)
                + " ON CONFLICT (source, id) DO NOTHING RETURNING source, id"
            )
        return sql

    def event_pages(
        self, events: Sequence[UsageEvent], *, ingested_at: datetime
    ) -> list[tuple[int, tuple[Any, ...]]]:
        """Parameters of the multi-row INSERTs for ``events``: ``(rows, flat values)`` pages,
        bound before the transaction opens so a bad event fails fast and holds no lock."""
        stamp = self.bind_time(ingested_at)
        pages = []
        for first in range(0, len(events), self._PAGE):
            page = events[first : first + self._PAGE]
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
            result = await connection.exec_driver_sql(self.events_sql(rows), values)
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


_ROLLUP_FIELDS = [column.name for column in _ROLLUPS.columns]
_VALUE_FIELDS = [column.name for column in _VALUES.columns]


def _processor(type_: Any, dialect: Dialect) -> Callable[[Any], Any]:
    processor = type_.dialect_impl(dialect).bind_processor(dialect)
    return processor if processor is not None else (lambda value: value)


def _compiled(statement: Any, dialect: Dialect, fields: list[str]) -> str:
    """SQL text of an INSERT whose positional parameters are ``fields``, in that order."""
    compiled = statement.compile(dialect=dialect)
    if list(compiled.positiontup or ()) != fields:
        raise RuntimeError(f"unexpected parameter order {compiled.positiontup} != {fields}")
    return str(compiled.string)


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


def _check_event(event: UsageEvent) -> None:
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
    for name, limit in _LIMITS.items():
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


class _QueryRun:
    """One meter query: SQL over the rollups, then merging into rows."""

    def __init__(self, connection: AsyncConnection, query: MeterQuery) -> None:
        self.connection = connection
        self.query = query
        self.months: list[date] = []
        self.table = _ROLLUPS
        self._bucketed = False
        self._group_cache: dict[str, GroupTuple] = {}
        self._windows: dict[int, tuple[datetime, datetime]] = {}

    async def rows(self) -> list[QueryRow]:
        query = self.query
        lo, hi = query.from_minute, query.to_minute
        segments: list[tuple[int, int]] = []
        if query.bucketing in ("hour", "day", "month"):
            if lo is None or hi is None:
                # The hourly table spans the same minutes in whole hours: enough to find the
                # zone's offsets and months for the range.
                first, last = (
                    await self.connection.execute(
                        select(
                            func.min(_HOURLY.c.window_minute), func.max(_HOURLY.c.window_minute)
                        ).where(*self._filters(_HOURLY, hours=True))
                    )
                ).one()
                if first is None:
                    return []
                lo = first if lo is None else lo
                hi = last + 60 if hi is None else hi
            segments = offset_segments(query.time_zone, lo, hi)
            if query.bucketing == "month":
                self.months = month_starts(query.time_zone, lo, hi)
        self.table = _HOURLY if self._hourly_will_do(segments) else _ROLLUPS
        bucket = self._bucket(segments)
        self._bucketed = bucket is not None
        states, minutes = await self._states(bucket)
        if query.meter.aggregation is MeterAggregation.LATEST:
            await self._latest(bucket, states)
        distinct = None
        if query.meter.aggregation is MeterAggregation.UNIQUE_COUNT:
            distinct = await self._distinct(bucket)
        rows = []
        aggregation = query.meter.aggregation
        for key, state in states.items():
            if distinct is not None:
                value: float | None = float(distinct.get(key, 0))
            else:
                value = final_value(aggregation, state)
            if value is None:
                continue
            start, end = self._window(key[0], minutes[key])
            rows.append(
                QueryRow(
                    value=value,
                    window_start=start,
                    window_end=end,
                    subject=key[1],
                    group_by=dict(zip(query.group_by, key[2], strict=True)),
                )
            )
        rows.sort(
            key=lambda row: row_order(row.window_start, row.subject, [*row.group_by.values()])
        )
        return rows

    def _filters(self, table: Table, *, hours: bool = False) -> list[ColumnElement[bool]]:
        """The query's meter, subjects and range; ``hours`` widens the range to whole hours."""
        query = self.query
        filters = [table.c.meter == query.meter.slug]
        if query.subjects is not None:
            filters.append(table.c.subject.in_(query.subjects))
        lo, hi = query.from_minute, query.to_minute
        if lo is not None:
            filters.append(table.c.window_minute >= (lo - lo % 60 if hours else lo))
        if hi is not None:
            filters.append(table.c.window_minute < hi)
        return filters

    def _hourly_will_do(self, segments: Sequence[tuple[int, int]]) -> bool:
        """Whether hour rollups answer the query exactly: windows of an hour or more, bounds
        on whole hours, and zone offsets (and their changes) on whole hours."""
        query = self.query
        if query.bucketing == "minute":
            return False
        if query.bucketing == "total" and (query.from_ is None or query.to is None):
            return False  # the window is then the first and last minute with usage
        bounds = [query.from_minute, query.to_minute]
        if any(bound is not None and bound % 60 for bound in bounds):
            return False
        return all(offset % 60 == 0 and start % 60 == 0 for start, offset in segments[1:]) and (
            not segments or segments[0][1] % 60 == 0
        )

    def _bucket(
        self, segments: Sequence[tuple[int, int]]
    ) -> Callable[[Table], ColumnElement[int]] | None:
        """A function giving the bucket expression for a table's ``window_minute``."""
        query = self.query
        kind = query.bucketing
        if kind == "total" or (kind == "month" and len(self.months) == 1):
            return None  # one window: nothing to tell apart (and GROUP BY 0 is a position)
        if kind == "minute":
            return lambda table: table.c.window_minute

        def expression(table: Table) -> ColumnElement[int]:
            minute = table.c.window_minute
            if len(segments) == 1:
                offset: ColumnElement[int] = _int(segments[0][1])
            else:
                offset = case(
                    *((minute >= _int(start), _int(off)) for start, off in reversed(segments[1:])),
                    else_=_int(segments[0][1]),
                )
            if kind == "hour":
                return minute - (minute + offset + _int(SHIFT_MINUTES)) % _int(60)
            if kind == "day":
                return (minute + offset + _int(SHIFT_MINUTES)) // _int(1440)
            local = minute + offset
            return case(
                *(
                    (local >= _int(local_day_minute(month)), _int(index))
                    for index, month in reversed(list(enumerate(self.months)))
                    if index > 0
                ),
                else_=_int(0),
            )

        return expression

    def _grouped(
        self, table: Table, bucket: Callable[[Table], ColumnElement[int]] | None
    ) -> list[ColumnElement[Any]]:
        columns: list[ColumnElement[Any]] = []
        if bucket is not None:
            columns.append(bucket(table).label("bucket"))
        if self.query.by_subject:
            columns.append(table.c.subject)
        if self.query.group_by:
            columns.append(table.c.group_key)
        return columns

    def _key(self, row: Sequence[Any]) -> ResultKey:
        """The result key of a row whose first columns are those of ``_grouped``."""
        index = 0
        bucket = 0
        if self._bucketed:
            bucket = int(row[0]) - (SHIFT_DAYS if self.query.bucketing == "day" else 0)
            index = 1
        subject = None
        if self.query.by_subject:
            subject = row[index]
            index += 1
        groups: GroupTuple = ()
        if self.query.group_by:
            raw = row[index]
            groups = self._group_cache.get(raw) or self._project(raw)
        return bucket, subject, groups

    def _project(self, raw: str) -> GroupTuple:
        values = json.loads(raw)
        projected = tuple(values.get(name) for name in self.query.group_by)
        self._group_cache[raw] = projected
        return projected

    async def _states(
        self, bucket: Callable[[Table], ColumnElement[int]] | None
    ) -> tuple[dict[ResultKey, RollupState], dict[ResultKey, tuple[int, int]]]:
        t = self.table.c
        grouped = self._grouped(self.table, bucket)
        statement: Select[Any] = select(
            *grouped,
            func.sum(t.event_count).label("event_count"),
            func.sum(t.value_count).label("value_count"),
            func.sum(t.value_sum).label("value_sum"),
            func.min(t.value_min).label("value_min"),
            func.max(t.value_max).label("value_max"),
            func.min(t.window_minute).label("first_minute"),
            func.max(t.window_minute).label("last_minute"),
        ).where(*self._filters(self.table))
        if grouped:
            statement = statement.group_by(*grouped)
        states: dict[ResultKey, RollupState] = {}
        minutes: dict[ResultKey, tuple[int, int]] = {}
        width = len(grouped)
        for row in (await self.connection.execute(statement)).all():
            count, value_count, value_sum, low, high, first, last = row[width:]
            if not count:
                continue
            key = self._key(row)
            state = RollupState(int(count), int(value_count), float(value_sum), low, high)
            if key in states:
                states[key].merge(state)
                earliest, latest = minutes[key]
                minutes[key] = (min(earliest, first), max(latest, last))
            else:
                states[key] = state
                minutes[key] = (first, last)
        return states, minutes

    async def _latest(
        self,
        bucket: Callable[[Table], ColumnElement[int]] | None,
        states: dict[ResultKey, RollupState],
    ) -> None:
        t = self.table.c
        grouped = self._grouped(self.table, bucket)
        ranked = (
            select(
                *grouped,
                t.latest_us,
                t.latest_value,
                func.row_number()
                .over(
                    partition_by=grouped or None,
                    order_by=(t.latest_us.desc(), t.latest_value.desc()),
                )
                .label("rank"),
            )
            .where(*self._filters(self.table), t.latest_us.is_not(None))
            .subquery()
        )
        statement = select(ranked).where(ranked.c["rank"] == 1)
        width = len(grouped)
        for row in (await self.connection.execute(statement)).all():
            at_us, value = row[width], row[width + 1]
            state = states.get(self._key(row))
            if state is not None and state.latest_after(at_us, value):
                state.latest_us, state.latest_value = at_us, value

    async def _distinct(
        self, bucket: Callable[[Table], ColumnElement[int]] | None
    ) -> dict[ResultKey, int]:
        t = _VALUES.c
        grouped = self._grouped(_VALUES, bucket)
        counts: dict[ResultKey, int] = {}
        if not self.query.group_by or self.query.all_groups:
            statement: Select[Any] = select(
                *grouped, func.count(distinct(t.value)).label("distinct_count")
            ).where(*self._filters(_VALUES))
            if grouped:
                statement = statement.group_by(*grouped)
            for row in (await self.connection.execute(statement)).all():
                counts[self._key(row)] = int(row[-1])
            return counts
        # Grouping by some of the meter's group keys: distinct values must be unioned across
        # the groups that collapse into one, so they are collected here rather than counted.
        sets: dict[ResultKey, set[str]] = {}
        statement = select(*grouped, t.value).distinct().where(*self._filters(_VALUES))
        for row in (await self.connection.execute(statement)).all():
            sets.setdefault(self._key(row), set()).add(row[-1])
        return {key: len(values) for key, values in sets.items()}

    def _window(self, bucket: int, minutes: tuple[int, int]) -> tuple[datetime, datetime]:
        query = self.query
        if query.bucketing == "total":
            start = query.from_ if query.from_ is not None else minute_start(minutes[0])
            end = query.to if query.to is not None else minute_start(minutes[1] + 1)
            return start, end
        bounds = self._windows.get(bucket)
        if bounds is None:
            bounds = self._windows[bucket] = window_bounds(query, bucket, self.months)
        return bounds
