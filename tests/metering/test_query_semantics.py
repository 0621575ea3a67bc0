"""Query parameters and window arithmetic (pure code; the store tests run them on SQL)."""

from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from kgents.errors import InvalidInput
from kgents.metering.meters import WindowSize
from kgents.metering.query import (
    build_query,
    month_starts,
    offset_segments,
    utc_offset_minutes,
    window_bounds,
)
from kgents.metering.rollup import epoch_minute
from tests.metering.support import T0, TEST_METERS

METER = next(meter for meter in TEST_METERS if meter.slug == "sample_sum")
BERLIN = ZoneInfo("Europe/Berlin")


def test_subjects_filter_and_group_by_subject() -> None:
    query = build_query(METER, subjects=["a", "b", "a"])

    assert query.subjects == ("a", "b")
    assert query.by_subject
    assert query.group_by == ()


def test_group_by_names_meter_keys_and_the_reserved_subject() -> None:
    query = build_query(METER, group_by=["tier", "subject", "tier"])

    assert query.group_by == ("tier",)
    assert query.by_subject
    assert not query.all_groups
    assert build_query(METER, group_by=["region", "tier"]).all_groups


def test_bounds_in_any_offset_are_taken_as_instants() -> None:
    plus_two = timezone(timedelta(hours=2))
    query = build_query(METER, from_=datetime(2026, 3, 2, 2, tzinfo=plus_two))

    assert query.from_ == T0
    assert query.from_.tzinfo is UTC


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"group_by": ["model"]}, "has no group key 'model'"),
        ({"from_": T0 + timedelta(seconds=1)}, "'from' must fall on a whole minute"),
        ({"to": T0 + timedelta(microseconds=1)}, "'to' must fall on a whole minute"),
        ({"from_": T0.replace(tzinfo=None)}, "'from' must carry a time zone"),
        ({"from_": T0, "to": T0}, "'from' must be before 'to'"),
        ({"to": datetime(9999, 12, 31, tzinfo=UTC)}, "'to' must be between 1000 and 9000"),
        ({"from_": T0 + timedelta(hours=1), "to": T0}, "'from' must be before 'to'"),
        ({"window_size": "WEEK"}, "windowSize must be one of"),
        ({"window_time_zone": "Mars/Olympus"}, "unknown windowTimeZone"),
        ({"window_time_zone": "../etc/passwd"}, "unknown windowTimeZone"),
    ],
)
def test_invalid_parameters_are_refused(arguments: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        build_query(METER, **arguments)  # type: ignore[arg-type]


def test_offset_changes_are_found_to_the_minute() -> None:
    # Berlin springs forward at 01:00 UTC on 2026-03-29 and falls back at 01:00 UTC on 10-25.
    spring = epoch_minute(datetime(2026, 3, 29, 1, tzinfo=UTC))
    autumn = epoch_minute(datetime(2026, 10, 25, 1, tzinfo=UTC))
    lo = epoch_minute(datetime(2026, 3, 1, tzinfo=UTC))
    hi = epoch_minute(datetime(2026, 12, 1, tzinfo=UTC))

    assert offset_segments(BERLIN, lo, hi) == [(lo, 60), (spring, 120), (autumn, 60)]
    assert offset_segments(ZoneInfo("UTC"), lo, hi) == [(lo, 0)]
    assert utc_offset_minutes(ZoneInfo("Asia/Kolkata"), lo) == 330


def test_days_run_from_local_midnight_and_last_23_or_25_hours_across_dst() -> None:
    query = build_query(METER, window_size=WindowSize.DAY, window_time_zone="Europe/Berlin")

    def day(value: date) -> tuple[datetime, datetime]:
        return window_bounds(query, (value - date(1970, 1, 1)).days)

    start, end = day(date(2026, 3, 29))
    assert start == datetime(2026, 3, 28, 23, tzinfo=UTC)
    assert end - start == timedelta(hours=23)
    start, end = day(date(2026, 10, 25))
    assert start == datetime(2026, 10, 24, 22, tzinfo=UTC)
    assert end - start == timedelta(hours=25)


def test_months_run_from_local_midnight_of_the_first() -> None:
    query = build_query(METER, window_size=WindowSize.MONTH, window_time_zone="Europe/Berlin")
    lo = epoch_minute(datetime(2026, 1, 31, 23, tzinfo=UTC))  # Feb 1st in Berlin
    hi = epoch_minute(datetime(2026, 4, 1, tzinfo=UTC))
    months = month_starts(BERLIN, lo, hi)

    assert months == [date(2026, 2, 1), date(2026, 3, 1), date(2026, 4, 1)]
    assert window_bounds(query, 1, months) == (
        datetime(2026, 2, 28, 23, tzinfo=UTC),
        datetime(2026, 3, 31, 22, tzinfo=UTC),
    )
