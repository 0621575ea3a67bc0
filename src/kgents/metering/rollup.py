"""Per-minute aggregate state: what ingesting events adds to each meter (pure code).

Usage is kept per meter, subject, group and UTC minute as mergeable state (count, sum, min, max,
latest), so SUM, COUNT, AVG, MIN, MAX and LATEST over any window are merges of minutes. Distinct
values for UNIQUE_COUNT are kept per minute as a set, because distinct counts do not add up.

Values follow OpenMeter: numbers and numeric strings count, anything else (missing, null,
booleans, non-numeric strings, NaN, infinities) is skipped for that meter while COUNT still
counts the event. Group-by values are strings; numbers and booleans are written as in JSON, and
missing, null, empty or non-scalar values group as ``null``. UNIQUE_COUNT reads its values the
same way and does not count missing, null or empty ones. Group-by and distinct values longer
than ``MAX_DIMENSION_CHARS`` are cut to that length.
"""

import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kgents.metering.jsonpath import JsonPath
from kgents.metering.meters import Meter, MeterAggregation
from kgents.records import UsageEvent

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Times usage may carry: far enough from datetime's limits that window arithmetic in any zone
# cannot overflow.
EARLIEST = datetime(1000, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
_MINUTE = timedelta(minutes=1)
_MICROSECOND = timedelta(microseconds=1)
_MICROSECONDS_PER_MINUTE = 60_000_000
# Longest group-by or distinct value kept; longer ones are cut (keeps index keys bounded).
MAX_DIMENSION_CHARS = 256
_EXACT_INT = 2**53
_NUMBER = re.compile(r"\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*")

_NO_GROUPS = "{}"

RollupKey = tuple[str, str, str, int]
"""(meter slug, subject, group key, UTC minute since the epoch)."""

DistinctKey = tuple[str, str, str, int, str]
"""A ``RollupKey`` plus one distinct value of a UNIQUE_COUNT meter."""


def epoch_minute(at: datetime) -> int:
    """Whole minutes since 1970-01-01T00:00Z (floor), exact for any aware datetime."""
    return (at - EPOCH) // _MINUTE


def minute_start(minute: int) -> datetime:
    return EPOCH + minute * _MINUTE


def epoch_microseconds(at: datetime) -> int:
    return (at - EPOCH) // _MICROSECOND


def numeric_value(raw: Any) -> float | None:
    """``raw`` as a finite number, or ``None`` when it does not count as one."""
    if type(raw) is int and -_EXACT_INT <= raw <= _EXACT_INT:  # the common case, fast
        return float(raw)
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int | float):
        try:
            number = float(raw)
        except OverflowError:
            return None
    elif isinstance(raw, str) and _NUMBER.fullmatch(raw):
        number = float(raw)
    else:
        return None
    return number if math.isfinite(number) else None


def dimension_value(raw: Any) -> str | None:
    """``raw`` as a group-by or distinct value: a non-empty string, or ``None``."""
    if isinstance(raw, str):
        text = raw
    elif isinstance(raw, bool):
        text = "true" if raw else "false"
    elif isinstance(raw, int | float):
        if isinstance(raw, float) and not math.isfinite(raw):
            return None
        text = json.dumps(raw)
    else:
        return None
    return text[:MAX_DIMENSION_CHARS] or None


def group_key(values: dict[str, str | None]) -> str:
    """Canonical JSON of group-by values: one spelling per group, usable as a key column."""
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(slots=True)
class RollupState:
    """Mergeable aggregate of one meter, subject, group and minute."""

    event_count: int = 0
    value_count: int = 0
    value_sum: float = 0.0
    value_min: float | None = None
    value_max: float | None = None
    latest_us: int | None = None
    latest_value: float | None = None

    def add(self, value: float | None, at_us: int) -> None:
        self.event_count += 1
        if value is None:
            return
        self.value_count += 1
        self.value_sum += value
        if self.value_min is None or value < self.value_min:
            self.value_min = value
        if self.value_max is None or value > self.value_max:
            self.value_max = value
        if self.latest_after(at_us, value):
            self.latest_us, self.latest_value = at_us, value

    def merge(self, other: "RollupState") -> None:
        self.event_count += other.event_count
        self.value_count += other.value_count
        self.value_sum += other.value_sum
        self.value_min = _pick(min, self.value_min, other.value_min)
        self.value_max = _pick(max, self.value_max, other.value_max)
        if other.latest_us is not None and other.latest_value is not None:
            if self.latest_after(other.latest_us, other.latest_value):
                self.latest_us, self.latest_value = other.latest_us, other.latest_value

    def latest_after(self, at_us: int, value: float) -> bool:
        """Whether (``at_us``, ``value``) is later than the current latest; ties go to the
        larger value, so the result does not depend on the order events arrive in."""
        if self.latest_us is None or self.latest_value is None:
            return True
        return (at_us, value) > (self.latest_us, self.latest_value)


def _pick(
    choose: Callable[[float, float], float], a: float | None, b: float | None
) -> float | None:
    if a is None:
        return b
    return a if b is None else choose(a, b)


@dataclass(slots=True)
class RollupDelta:
    """What a batch of new events adds: aggregate states and distinct values."""

    states: dict[RollupKey, RollupState] = field(default_factory=dict)
    distinct: set[DistinctKey] = field(default_factory=set)


Getter = Callable[[dict[str, Any]], Any]


def _getter(path: JsonPath) -> Getter:
    """``path.extract``, or for the usual one-key path the data's own ``get`` (much faster)."""
    if len(path.steps) == 1 and isinstance(path.steps[0], str):
        return operator.methodcaller("get", path.steps[0])
    return path.extract


@dataclass(frozen=True, slots=True)
class _CompiledMeter:
    slug: str
    unique: bool
    value: Getter | None
    group_names: tuple[str, ...]
    groups: tuple[Getter, ...]


class MeterSet:
    """Meters indexed by event type, with their JSONPaths parsed once."""

    def __init__(self, meters: Sequence[Meter]) -> None:
        self.meters = {meter.slug: meter for meter in meters}
        self._by_type: dict[str, list[_CompiledMeter]] = {}
        for meter in meters:
            value_path = meter.value_path()
            group_paths = sorted(meter.group_paths().items())
            compiled = _CompiledMeter(
                slug=meter.slug,
                unique=meter.aggregation is MeterAggregation.UNIQUE_COUNT,
                value=None if value_path is None else _getter(value_path),
                group_names=tuple(name for name, _ in group_paths),
                groups=tuple(_getter(path) for _, path in group_paths),
            )
            self._by_type.setdefault(meter.event_type, []).append(compiled)

    def event_types(self) -> list[str]:
        return sorted(self._by_type)

    def rollup(self, events: Iterable[UsageEvent], into: RollupDelta | None = None) -> RollupDelta:
        """Add ``events`` (already known to be new) to ``into`` or a new delta."""
        delta = into if into is not None else RollupDelta()
        states = delta.states
        group_keys: dict[tuple[str, tuple[str | None, ...]], str] = {}
        for event in events:
            meters = self._by_type.get(event.type)
            if not meters:
                continue
            at_us = epoch_microseconds(event.time)
            minute = at_us // _MICROSECONDS_PER_MINUTE
            data = event.data
            for meter in meters:
                if meter.groups:
                    values = tuple(dimension_value(get(data)) for get in meter.groups)
                    key = group_keys.get((meter.slug, values))
                    if key is None:
                        key = group_keys[meter.slug, values] = group_key(
                            dict(zip(meter.group_names, values, strict=True))
                        )
                else:
                    key = _NO_GROUPS
                rollup_key = (meter.slug, event.subject, key, minute)
                raw = meter.value(data) if meter.value is not None else None
                state = states.get(rollup_key)
                if state is None:
                    state = states[rollup_key] = RollupState()
                if meter.unique:
                    state.add(None, at_us)
                    distinct = dimension_value(raw)
                    if distinct is not None:
                        delta.distinct.add((*rollup_key, distinct))
                else:
                    state.add(numeric_value(raw), at_us)
        return delta
