"""The meter store in SQL: exactly-once ingest into minute and hour rollups, and meter queries.

Exactly once: an event's ``(source, id)`` is inserted with ``ON CONFLICT DO NOTHING ... RETURNING``
and only the rows that statement really inserted are added to the rollups, in the same
transaction. A duplicate, in the same batch, a later batch or a concurrent process, finds the key
and adds nothing; a failed batch rolls back keys and rollups together. Rows are written in key
order so concurrent batches on PostgreSQL lock them in the same order and cannot deadlock.

Queries are in ``meter_query_sql``; the ingest hot path, which sends compiled SQL at driver
level, is in ``meter_ingest_sql``.
"""

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Table,
    delete,
    func,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kgents.clock import utc_now
from kgents.errors import InvalidInput, NotFound, Unavailable
from kgents.metering import cloudevents
from kgents.metering.meters import Meter, MeterAggregation, WindowSize
from kgents.metering.ports import DeadLetter, ReplayOutcome
from kgents.metering.query import (
    DEFAULT_QUERY_LIMITS,
    QueryLimits,
    QueryRow,
    build_query,
    final_value,
)
from kgents.metering.rollup import (
    MeterSet,
    RollupState,
)
from kgents.records import UsageEvent
from kgents.store.engine import for_writes
from kgents.store.meter_ingest_sql import IngestSql, check_event
from kgents.store.meter_query_sql import QueryRun
from kgents.store.metering_schema import (
    DEAD_LETTERS,
    DEFINITIONS,
    EVENTS,
    HOURLY,
    ROLLUPS,
    VALUES,
)

_REBUILD_PAGE = 5000


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
        query_limits: QueryLimits = DEFAULT_QUERY_LIMITS,
    ) -> None:
        self._engine = engine
        self._query_limits = query_limits
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
        self._sql = IngestSql(engine.dialect)

    @property
    def meters(self) -> Sequence[Meter]:
        return self._meters

    @contextlib.asynccontextmanager
    async def _database(self, what: str, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """A connection (in a transaction when ``write``) whose driver errors become
        ``Unavailable``: the caller may retry, and nothing of a failed transaction is kept."""
        try:
            async with (
                for_writes(self._engine).begin() if write else self._engine.connect()
            ) as connection:
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
            check_event(event)
            unique.setdefault((event.source, event.id), event)
        if not unique:
            return 0
        ordered = [unique[key] for key in sorted(unique)]
        async with self._database("ingest", write=True) as connection:
            return await self._store_events(connection, ordered, at=at or self._clock())

    async def _store_events(
        self, connection: AsyncConnection, ordered: Sequence[UsageEvent], *, at: datetime
    ) -> int:
        """Insert checked, unique events (in key order) and roll up the new ones."""
        inserted = await self._sql.insert_events(
            connection, self._sql.event_pages(ordered, ingested_at=at)
        )
        new = [event for event in ordered if (event.source, event.id) in inserted]
        await self._sql.write_delta(connection, self._meter_set.rollup(new))
        return len(new)

    # -- meter definitions ----------------------------------------------------------------

    async def sync_meters(self, *, at: datetime | None = None) -> list[str]:
        """Rebuild from the stored events the rollups of meters that are new or whose
        definition changed since the last sync, and drop those of meters no longer configured.
        Call at start-up, before ingesting; returns the slugs rebuilt. Syncs run one at a
        time, so replicas that start together find the meters in sync after the first."""
        synced_at = at or self._clock()
        async with self._database("syncing meters", write=True) as connection:
            if self._postgresql:
                # Holds off concurrent ingest, so no event slips between the scan and commit,
                # and (unlike SHARE) another sync, which would insert the same definitions.
                await connection.execute(
                    text("LOCK TABLE meter_events IN SHARE ROW EXCLUSIVE MODE")
                )
            definitions = select(DEFINITIONS.c.slug, DEFINITIONS.c.fingerprint)
            known: dict[str, str] = dict((await connection.execute(definitions)).all())
            fingerprints = {meter.slug: meter_fingerprint(meter) for meter in self._meters}
            stale = [m for m in self._meters if known.get(m.slug) != fingerprints[m.slug]]
            gone = [slug for slug in known if slug not in fingerprints]
            dropped = [meter.slug for meter in stale] + gone
            if dropped:
                for table in (ROLLUPS, HOURLY, VALUES):
                    await connection.execute(delete(table).where(table.c.meter.in_(dropped)))
                await connection.execute(delete(DEFINITIONS).where(DEFINITIONS.c.slug.in_(dropped)))
            if stale:
                await self._rebuild(connection, MeterSet(stale))
                await connection.execute(
                    self._insert(DEFINITIONS),
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

    async def stale_meters(self) -> list[str]:
        """Slugs of the meters whose rollups were not built with the configured definition
        (new, changed or no longer configured): ``sync_meters`` would rebuild or drop them."""
        async with self._database("reading meter definitions", write=False) as connection:
            rows = await connection.execute(select(DEFINITIONS.c.slug, DEFINITIONS.c.fingerprint))
            known: dict[str, str] = dict(rows.all())
        configured = {meter.slug: meter_fingerprint(meter) for meter in self._meters}
        changed = {slug for slug, print_ in configured.items() if known.get(slug) != print_}
        return sorted(changed | (known.keys() - configured.keys()))

    async def _rebuild(self, connection: AsyncConnection, meters: MeterSet) -> None:
        after: tuple[str, str] | None = None
        columns = (EVENTS.c.source, EVENTS.c.id, EVENTS.c.type, EVENTS.c.subject)
        while True:
            statement = (
                select(*columns, EVENTS.c.time, EVENTS.c.data)
                .where(EVENTS.c.type.in_(meters.event_types()))
                .order_by(EVENTS.c.source, EVENTS.c.id)
                .limit(_REBUILD_PAGE)
            )
            if after is not None:
                statement = statement.where(tuple_(EVENTS.c.source, EVENTS.c.id) > after)
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
            limits=self._query_limits,
        )
        async with self._database("query", write=False) as connection:
            return await QueryRun(connection, query, self._query_limits).rows()

    async def totals_by_subject(self, meter: Meter | str) -> dict[str, float]:
        """Each subject's all-time value of ``meter`` (for reconciliation): one aggregate
        over the hour rollups, which hold the same events as the minutes in 60 times fewer
        rows (LATEST and UNIQUE_COUNT, which need more than the merged state, go through
        ``query``)."""
        chosen = self.meter(meter) if isinstance(meter, str) else meter
        if chosen.aggregation in (MeterAggregation.LATEST, MeterAggregation.UNIQUE_COUNT):
            queried = await self.query(chosen, group_by=["subject"])
            return {row.subject: row.value for row in queried if row.subject is not None}
        t = HOURLY.c
        statement = (
            select(
                t.subject,
                func.sum(t.event_count),
                func.sum(t.value_count),
                func.sum(t.value_sum),
                func.min(t.value_min),
                func.max(t.value_max),
            )
            .where(t.meter == chosen.slug)
            .group_by(t.subject)
        )
        async with self._database("totals by subject", write=False) as connection:
            rows = (await connection.execute(statement)).all()
        totals: dict[str, float] = {}
        for subject, count, value_count, value_sum, low, high in rows:
            state = RollupState(
                int(count or 0), int(value_count or 0), float(value_sum or 0), low, high
            )
            value = final_value(chosen.aggregation, state) if state.event_count else None
            if value is not None:
                totals[subject] = value
        return totals

    async def event_count(self) -> int:
        async with self._database("counting events", write=False) as connection:
            return (await connection.scalar(select(func.count()).select_from(EVENTS))) or 0

    # -- dead letters ---------------------------------------------------------------------

    async def park_dead_letter(
        self, *, event: UsageEvent | Mapping[str, Any], error: str, attempts: int, at: datetime
    ) -> int:
        """Keep an event the processor gave up on; returns the dead letter's id."""
        try:
            if isinstance(event, UsageEvent):
                stored = json.loads(cloudevents.encode(event))
            else:
                stored = json.loads(json.dumps(dict(event), default=str, allow_nan=False))
        except (ValueError, InvalidInput):  # not JSON, or not a usage event the codec encodes
            stored = {"unreadable": repr(event)}
        async with self._database("parking a dead letter", write=True) as connection:
            result = await connection.execute(
                self._insert(DEAD_LETTERS)
                .values(event=stored, error=error, attempts=attempts, parked_at=at)
                .returning(DEAD_LETTERS.c.id)
            )
            return int(result.scalar_one())

    async def dead_letters(self, *, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        """Parked events, oldest first."""
        async with self._database("listing dead letters", write=False) as connection:
            result = await connection.execute(
                select(DEAD_LETTERS).order_by(DEAD_LETTERS.c.id).limit(limit).offset(offset)
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
            return (await connection.scalar(select(func.count()).select_from(DEAD_LETTERS))) or 0

    async def dead_letter_ids(self, *, among: Sequence[int] | None = None) -> list[int]:
        """The ids of parked events, oldest first: all of them, or those of ``among`` that
        are still parked."""
        statement = select(DEAD_LETTERS.c.id).order_by(DEAD_LETTERS.c.id)
        if among is not None:
            statement = statement.where(DEAD_LETTERS.c.id.in_(list(among)))
        async with self._database("listing dead letters", write=False) as connection:
            return list((await connection.scalars(statement)).all())

    async def dead_letter_event(self, dead_letter_id: int) -> UsageEvent | None:
        """The usage event parked as ``dead_letter_id`` (``None`` when it is no longer
        parked); ``InvalidInput`` when replaying it would keep it parked, saying why."""
        async with self._database("reading a dead letter", write=False) as connection:
            stored = await connection.scalar(
                select(DEAD_LETTERS.c.event).where(DEAD_LETTERS.c.id == dead_letter_id)
            )
        return None if stored is None else _replayable(stored)

    async def replay_dead_letter(
        self, dead_letter_id: int, *, at: datetime | None = None
    ) -> ReplayOutcome:
        """Ingest a parked event and remove it from the dead letters, in one transaction.

        Its ``(source, id)`` key makes this idempotent: an event the store already holds
        counts nothing more (``duplicate``). An event still refused (not a usage event, or
        one the tables cannot hold) stays parked (``still_parked``, with the reason)."""
        async with self._database("replaying a dead letter", write=True) as connection:
            # FOR UPDATE: two replays of one dead letter on PostgreSQL run one after the
            # other (SQLite's write transactions already do).
            row = (
                await connection.execute(
                    select(DEAD_LETTERS.c.event)
                    .where(DEAD_LETTERS.c.id == dead_letter_id)
                    .with_for_update()
                )
            ).first()
            if row is None:
                return ReplayOutcome(dead_letter_id, "gone")
            try:
                event = _replayable(row.event)
            except InvalidInput as exc:
                return ReplayOutcome(dead_letter_id, "still_parked", exc.message)
            new = await self._store_events(connection, [event], at=at or self._clock())
            await connection.execute(
                delete(DEAD_LETTERS).where(DEAD_LETTERS.c.id == dead_letter_id)
            )
        return ReplayOutcome(dead_letter_id, "counted" if new else "duplicate")


def _replayable(stored: Any) -> UsageEvent:
    """A parked event as the usage event a replay stores; ``InvalidInput`` if it is none."""
    if not isinstance(stored, dict):
        raise InvalidInput("not a usage event: not a JSON object")
    # Parked at its first delivery or later: it has a time, so none is defaulted.
    event = cloudevents.decode_event(stored, default_time=utc_now())
    check_event(event)
    return event
