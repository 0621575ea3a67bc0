"""Meter queries in SQL over the minute and hour rollups.

Queries read rollups only: the hourly table when it answers exactly (windows of an hour or more,
bounds on whole hours, a zone of whole-hour offsets), else the minute table. Windows are computed
in SQL with integer arithmetic on ``window_minute`` (semantics in ``kgents.metering.query``):

- MINUTE: the minute itself. HOUR: ``m - (m + offset) % 60``, the UTC minute the window starts.
- DAY: ``(m + offset) / 1440``, the local day number. MONTH: index into the local months of the
  range, by comparing the local minute ``m + offset`` with each month's first minute.

``offset`` is the zone's UTC offset at ``m``: a ``CASE`` over the offset changes in the range.
Finding those changes (and the months), and each window's bounds, is CPU work that grows with
the range: it runs in a worker thread, after the range was checked against the query limits.
"""

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Select,
    Table,
    case,
    distinct,
    func,
    literal_column,
    select,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from kgents.metering.meters import MeterAggregation
from kgents.metering.query import (
    SHIFT_DAYS,
    SHIFT_MINUTES,
    MeterQuery,
    QueryLimits,
    QueryRow,
    final_value,
    local_day_minute,
    row_order,
    window_bounds,
    window_plan,
)
from kgents.metering.rollup import (
    RollupState,
    minute_start,
)
from kgents.store.metering_schema import HOURLY, ROLLUPS, VALUES

GroupTuple = tuple[str | None, ...]
ResultKey = tuple[int, str | None, GroupTuple]
"""(bucket, subject when grouped by it, requested group values)."""


def _int(value: int) -> ColumnElement[int]:
    # Integers we computed ourselves, inlined so SELECT and GROUP BY repeat the same text.
    return literal_column(str(int(value)), BigInteger)


class QueryRun:
    """One meter query: SQL over the rollups, then merging into rows."""

    def __init__(self, connection: AsyncConnection, query: MeterQuery, limits: QueryLimits) -> None:
        self.connection = connection
        self.query = query
        self.limits = limits
        self.months: list[date] = []
        self.table = ROLLUPS
        self._bucketed = False
        self._group_cache: dict[str, GroupTuple] = {}
        self._windows: dict[int, tuple[datetime, datetime]] = {}

    async def rows(self) -> list[QueryRow]:
        query = self.query
        lo, hi = query.from_minute, query.to_minute
        segments: list[tuple[int, int]] = []
        if query.bucketing != "total":
            if lo is None or hi is None:
                # The hourly table spans the same minutes in whole hours: enough to bound the
                # work and to find the zone's offsets and months for the range.
                first, last = (
                    await self.connection.execute(
                        select(
                            func.min(HOURLY.c.window_minute), func.max(HOURLY.c.window_minute)
                        ).where(*self._filters(HOURLY, hours=True))
                    )
                ).one()
                if first is None:
                    return []
                lo = first if lo is None else lo
                hi = last + 60 if hi is None else hi
                self.limits.check(query.window_size, lo, hi, given=False)
            if query.bucketing != "minute":
                segments, self.months = await asyncio.to_thread(window_plan, query, lo, hi)
        self.table = HOURLY if self._hourly_will_do(segments) else ROLLUPS
        bucket = self._bucket(segments)
        self._bucketed = bucket is not None
        states, minutes = await self._states(bucket)
        if self._bucketed and (query.from_ is None or query.to is None):
            self.limits.check_result(len({key[0] for key in states}))
        if query.meter.aggregation is MeterAggregation.LATEST:
            await self._latest(bucket, states)
        distinct = None
        if query.meter.aggregation is MeterAggregation.UNIQUE_COUNT:
            distinct = await self._distinct(bucket)
        # A window's bounds are time-zone arithmetic too (two conversions per window).
        return await asyncio.to_thread(self._assemble, states, minutes, distinct)

    def _assemble(
        self,
        states: dict[ResultKey, RollupState],
        minutes: dict[ResultKey, tuple[int, int]],
        distinct: dict[ResultKey, int] | None,
    ) -> list[QueryRow]:
        """The rows of the merged states, with their windows, in order."""
        query = self.query
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
        t = VALUES.c
        grouped = self._grouped(VALUES, bucket)
        counts: dict[ResultKey, int] = {}
        if not self.query.group_by or self.query.all_groups:
            statement: Select[Any] = select(
                *grouped, func.count(distinct(t.value)).label("distinct_count")
            ).where(*self._filters(VALUES))
            if grouped:
                statement = statement.group_by(*grouped)
            for row in (await self.connection.execute(statement)).all():
                counts[self._key(row)] = int(row[-1])
            return counts
        # Grouping by some of the meter's group keys: distinct values must be unioned across
        # the groups that collapse into one, so they are collected here rather than counted.
        sets: dict[ResultKey, set[str]] = {}
        statement = select(*grouped, t.value).distinct().where(*self._filters(VALUES))
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
