"""Meter queries with OpenMeter's semantics (pure code; the SQL lives in the meter store).

- ``from`` is inclusive and ``to`` exclusive. Both must fall on whole minutes, the resolution
  usage is stored at, and ``from`` must be before ``to``; anything else is ``InvalidInput``. They
  need not be aligned to ``windowSize``: a window cut by ``from`` or ``to`` keeps its full
  ``windowStart``/``windowEnd`` and holds only the usage inside the range (as OpenMeter does).
- Windows are aligned in ``windowTimeZone`` (IANA name, default UTC). MINUTE and HOUR windows
  are fixed lengths of time placed at the zone's whole minutes and hours, so the hour repeated
  when clocks go back is two windows. DAY and MONTH windows run from local midnight to local
  midnight, so they last 23 or 25 hours across a daylight-saving change.
- Without ``windowSize`` there is one row per subject and group for the whole range; its window is
  ``from``/``to`` when given, else the first and last minute that have usage.
- Only windows with usage are returned, in time order. A window whose events carry no usable
  value (SUM, AVG, MIN, MAX, LATEST) has no row, as in OpenMeter.
- ``subject`` filters and also groups by subject (an empty list filters nothing); ``groupBy``
  names the meter's group keys, plus the reserved ``subject``; rows carry ``subject`` only when
  grouped by it, and ``groupBy`` values are ``null`` for events without the key.
- The work one query may ask for is bounded (``QueryLimits``): a query with ``windowSize``
  spans at most ``max_span_days`` days (the range given, or else the usage stored), a range
  given has room for at most ``max_windows`` windows, and a result without a range given has at
  most that many windows; otherwise ``QueryTooLarge`` states the limit. A total has no bound: it
  is one sum over the range.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from kgents.errors import InvalidInput, QueryTooLarge
from kgents.metering.meters import Meter, MeterAggregation, WindowSize
from kgents.metering.rollup import (
    EARLIEST,
    LATEST,
    RollupState,
    epoch_minute,
    minute_start,
)

DEFAULT_SPAN = timedelta(days=30)
"""How far back a usage report reaches when given no start (``GET /v1/usage``, ``kgents usage``)."""

_EPOCH_DAY = date(1970, 1, 1)
_MINUTES_PER_DAY = 1440
_ONE_MINUTE = timedelta(minutes=1)
_ONE_HOUR = timedelta(hours=1)
# Offset added before integer division in SQL so it never sees a negative number.
SHIFT_DAYS = 10_000_000
SHIFT_MINUTES = SHIFT_DAYS * _MINUTES_PER_DAY
# Zones change offset at most a few times a year; sampling every 6 hours finds every change.
_OFFSET_SAMPLE_MINUTES = 360

_NOMINAL_MINUTES = {
    WindowSize.MINUTE: 1,
    WindowSize.HOUR: 60,
    WindowSize.DAY: _MINUTES_PER_DAY,
    WindowSize.MONTH: 28 * _MINUTES_PER_DAY,  # the shortest month: never undercounts windows
}

Bucketing = Literal["total", "minute", "hour", "day", "month"]
_BUCKETING: dict[WindowSize | None, Bucketing] = {
    None: "total",
    WindowSize.MINUTE: "minute",
    WindowSize.HOUR: "hour",
    WindowSize.DAY: "day",
    WindowSize.MONTH: "month",
}


@dataclass(frozen=True, slots=True)
class QueryRow:
    """One row of a meter query: OpenMeter's ``MeterQueryRow``."""

    value: float
    window_start: datetime
    window_end: datetime
    subject: str | None
    group_by: dict[str, str | None]


@dataclass(frozen=True, slots=True)
class MeterQuery:
    """Validated query parameters."""

    meter: Meter
    subjects: tuple[str, ...] | None
    by_subject: bool
    group_by: tuple[str, ...]
    from_: datetime | None
    to: datetime | None
    window_size: WindowSize | None
    time_zone: ZoneInfo
    bucketing: Bucketing

    @property
    def from_minute(self) -> int | None:
        return None if self.from_ is None else epoch_minute(self.from_)

    @property
    def to_minute(self) -> int | None:
        return None if self.to is None else epoch_minute(self.to)

    @property
    def all_groups(self) -> bool:
        """Whether the query groups by every group key of the meter."""
        return set(self.group_by) == set(self.meter.group_by)


@dataclass(frozen=True, slots=True)
class QueryLimits:
    """The most work one windowed query may ask for (``KGENTS_METER_QUERY_MAX_*``)."""

    max_windows: int = 10_000
    max_span_days: int = 3_660

    def check(self, window_size: WindowSize | None, lo: int, hi: int, *, given: bool) -> None:
        """Raise ``QueryTooLarge`` when ``[lo, hi)`` (epoch minutes) is too long for windows
        of ``window_size``; ``given`` says whether the range came from ``from``/``to`` (a
        range read from the usage stored is checked for its length only: the windows that
        have usage are counted by ``check_result``)."""
        if window_size is None:
            return
        span = hi - lo
        narrow = "narrow 'from' and 'to'" if given else "give 'from' and 'to'"
        if span > self.max_span_days * _MINUTES_PER_DAY:
            days = -(-span // _MINUTES_PER_DAY)
            raise QueryTooLarge(
                f"a query with windowSize may span at most {self.max_span_days:,} days; "
                f"{'this range' if given else 'the usage stored'} spans {days:,}: {narrow}"
            )
        windows = -(-span // _NOMINAL_MINUTES[window_size])
        if given and windows > self.max_windows:
            most = timedelta(minutes=self.max_windows * _NOMINAL_MINUTES[window_size])
            raise QueryTooLarge(
                f"a query may have at most {self.max_windows:,} windows (windowSize "
                f"{window_size.value}: a range of at most {_duration(most)}); this range has "
                f"up to {windows:,}: narrow 'from' and 'to', or use a larger windowSize"
            )

    def check_result(self, windows: int) -> None:
        """Raise ``QueryTooLarge`` when a query without a range found usage in too many
        windows."""
        if windows > self.max_windows:
            raise QueryTooLarge(
                f"a query may have at most {self.max_windows:,} windows; the usage stored "
                f"is in {windows:,}: give 'from' and 'to', or use a larger windowSize"
            )


def _duration(length: timedelta) -> str:
    days, hours = length.days, length.seconds // 3600
    minutes = length.seconds % 3600 // 60
    parts = [f"{days:,} days" if days else "", f"{hours} h" if hours else ""]
    parts.append(f"{minutes} min" if minutes else "")
    return " ".join(part for part in parts if part) or "0 min"


DEFAULT_QUERY_LIMITS = QueryLimits()


def build_query(
    meter: Meter,
    *,
    subjects: Sequence[str] | None = None,
    group_by: Sequence[str] = (),
    from_: datetime | None = None,
    to: datetime | None = None,
    window_size: WindowSize | str | None = None,
    window_time_zone: str = "UTC",
    limits: QueryLimits = DEFAULT_QUERY_LIMITS,
) -> MeterQuery:
    """Check the parameters of a query of ``meter``; raise ``InvalidInput`` naming the problem
    (``QueryTooLarge`` when a given range is beyond ``limits``)."""
    keys: list[str] = []
    by_subject = False
    for key in group_by:
        if key == "subject":
            by_subject = True
        elif key not in meter.group_by:
            raise InvalidInput(f"meter {meter.slug!r} has no group key {key!r}")
        elif key not in keys:
            keys.append(key)
    chosen_subjects = tuple(dict.fromkeys(subjects)) if subjects else None
    if chosen_subjects is not None:
        by_subject = True  # OpenMeter: filtering by subject also groups by it
    start, end = _bound("from", from_), _bound("to", to)
    if start is not None and end is not None and start >= end:
        raise InvalidInput("'from' must be before 'to'")
    try:
        size = None if window_size is None else WindowSize(window_size)
    except ValueError:
        raise InvalidInput(f"windowSize must be one of {', '.join(WindowSize)}") from None
    try:
        zone = ZoneInfo(window_time_zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise InvalidInput(f"unknown windowTimeZone {window_time_zone!r}") from None
    if start is not None and end is not None:
        limits.check(size, epoch_minute(start), epoch_minute(end), given=True)
    return MeterQuery(
        meter=meter,
        subjects=chosen_subjects,
        by_subject=by_subject,
        group_by=tuple(keys),
        from_=start,
        to=end,
        window_size=size,
        time_zone=zone,
        bucketing=_BUCKETING[size],
    )


def _bound(name: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInput(f"'{name}' must carry a time zone offset")
    instant = value.astimezone(UTC)
    if not EARLIEST <= instant < LATEST:
        raise InvalidInput(f"'{name}' must be between {EARLIEST.year} and {LATEST.year}")
    if instant.second or instant.microsecond:
        raise InvalidInput(f"'{name}' must fall on a whole minute (usage is kept per minute)")
    return instant


def utc_offset_minutes(zone: ZoneInfo, minute: int) -> int:
    """The zone's offset from UTC at ``minute``, in whole minutes (LMT seconds are dropped)."""
    offset = minute_start(minute).astimezone(zone).utcoffset() or timedelta(0)
    return offset // timedelta(minutes=1)


def offset_segments(zone: ZoneInfo, lo: int, hi: int) -> list[tuple[int, int]]:
    """``(first minute, offset)`` for each stretch of constant UTC offset in ``[lo, hi)``."""
    segments = [(lo, utc_offset_minutes(zone, lo))]
    start = lo
    while start < hi - 1:
        end = min(start + _OFFSET_SAMPLE_MINUTES, hi - 1)
        current = segments[-1][1]
        if utc_offset_minutes(zone, end) == current:
            start = end
            continue
        low, high = start, end  # offset(low) == current != offset(high)
        while high - low > 1:
            middle = (low + high) // 2
            if utc_offset_minutes(zone, middle) == current:
                low = middle
            else:
                high = middle
        segments.append((high, utc_offset_minutes(zone, high)))
        start = high
    return segments


def window_plan(query: MeterQuery, lo: int, hi: int) -> tuple[list[tuple[int, int]], list[date]]:
    """The zone's offset segments in ``[lo, hi)`` and, for MONTH windows, the local months it
    touches: the CPU-bound part of a query (run it off the event loop)."""
    segments = offset_segments(query.time_zone, lo, hi)
    months = month_starts(query.time_zone, lo, hi) if query.bucketing == "month" else []
    return segments, months


def local_day_minute(day: date) -> int:
    """Wall-clock minutes from 1970-01-01 00:00 to the start of ``day`` (any zone)."""
    return (day - _EPOCH_DAY).days * _MINUTES_PER_DAY


def month_starts(zone: ZoneInfo, lo: int, hi: int) -> list[date]:
    """First days of the local months that ``[lo, hi)`` touches, in order."""
    first = minute_start(lo).astimezone(zone).date().replace(day=1)
    last = minute_start(hi - 1).astimezone(zone).date()
    months = []
    month = first
    while month <= last:
        months.append(month)
        month = _next_month(month)
    return months


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The instant ``day`` begins in ``zone`` (a skipped midnight: when the clocks jump)."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def window_bounds(
    query: MeterQuery, bucket: int, months: Sequence[date] = ()
) -> tuple[datetime, datetime]:
    """The window a SQL bucket number stands for (see ``SqlMeterStore`` for the numbering)."""
    match query.bucketing:
        case "minute":
            start = minute_start(bucket)
            return start, start + _ONE_MINUTE
        case "hour":
            start = minute_start(bucket)
            return start, start + _ONE_HOUR
        case "day":
            day = _EPOCH_DAY + timedelta(days=bucket)
            return (
                local_midnight(day, query.time_zone),
                local_midnight(day + timedelta(days=1), query.time_zone),
            )
        case "month":
            month = months[bucket]
            return (
                local_midnight(month, query.time_zone),
                local_midnight(_next_month(month), query.time_zone),
            )
    raise ValueError("a total has no bucket windows")


def final_value(aggregation: MeterAggregation, state: RollupState) -> float | None:
    """The value a merged state stands for, or ``None`` when the window has no row."""
    if aggregation is MeterAggregation.COUNT:
        return float(state.event_count)
    if state.value_count == 0:
        return None
    match aggregation:
        case MeterAggregation.SUM:
            return state.value_sum
        case MeterAggregation.AVG:
            return state.value_sum / state.value_count
        case MeterAggregation.MIN:
            return state.value_min
        case MeterAggregation.MAX:
            return state.value_max
        case MeterAggregation.LATEST:
            return state.latest_value
    raise ValueError(f"{aggregation} is not computed from rollup state")


def row_order(
    window_start: datetime, subject: str | None, groups: Sequence[str | None]
) -> tuple[Any, ...]:
    """Rows go in time order, then by subject and group values (``null`` first), so equal
    queries give equal answers."""
    return (
        window_start,
        subject or "",
        *[("", "") if value is None else ("1", value) for value in groups],
    )
