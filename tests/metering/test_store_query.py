"""Meter queries on the store: aggregations, windows, time zones, bounds, subjects, groups."""

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from kgents.errors import InvalidInput, NotFound, QueryTooLarge
from kgents.metering.query import QueryLimits, QueryRow
from kgents.store.meter_repo import SqlMeterStore
from tests.metering.support import T0, TEST_METERS, minutes, sample, tokens

pytestmark = pytest.mark.anyio

HOUR = timedelta(hours=1)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def values(rows: list[QueryRow]) -> list[tuple[datetime, datetime, float]]:
    return [(row.window_start, row.window_end, row.value) for row in rows]


@pytest.mark.parametrize(
    ("slug", "expected"),
    [
        ("sample_sum", 16.0),
        ("sample_count", 5.0),
        ("sample_avg", 4.0),
        ("sample_min", 1.0),
        ("sample_max", 7.0),
        ("sample_latest", 3.0),
        ("sample_unique_count", 5.0),
    ],
)
async def test_every_aggregation_merges_across_minutes_and_batches(
    store: SqlMeterStore, slug: str, expected: float
) -> None:
    # Out of time order and split over batches, so stored rollups merge in the database.
    await store.ingest([sample(5, at=T0 + minutes(10)), sample(3, at=T0 + minutes(30))])
    await store.ingest([sample(7, at=T0 + minutes(10))])
    await store.ingest([sample(1, at=T0), sample("x", at=T0 + minutes(20))])

    rows = await store.query(slug, window_size="HOUR")

    assert values(rows) == [(T0, T0 + HOUR, expected)]


async def test_latest_ties_in_time_go_to_the_larger_value(store: SqlMeterStore) -> None:
    await store.ingest([sample(4, at=T0 + minutes(1))])
    await store.ingest([sample(9, at=T0 + minutes(1)), sample(2, at=T0)])

    assert values(await store.query("sample_latest")) == [(T0, T0 + minutes(2), 9.0)]


async def test_unique_count_counts_a_value_once_across_minutes(store: SqlMeterStore) -> None:
    await store.ingest(
        [
            sample("a", at=T0),
            sample("a", at=T0 + minutes(5)),
            sample("b", at=T0 + minutes(5)),
            sample(7, at=T0 + minutes(6)),
            sample("7", at=T0 + minutes(7)),
        ]
    )

    assert [row.value for row in await store.query("sample_unique_count")] == [3.0]
    by_minute = await store.query("sample_unique_count", window_size="MINUTE")
    assert [row.value for row in by_minute] == [1.0, 2.0, 1.0, 1.0]


async def test_unique_count_unions_values_of_groups_merged_by_the_query(
    store: SqlMeterStore,
) -> None:
    await store.ingest(
        [
            sample("a", region="eu", tier="gold"),
            sample("a", region="eu", tier="free"),
            sample("b", region="eu", tier="free"),
            sample("a", region="us", tier="gold"),
        ]
    )

    by_region = await store.query("sample_unique_count", group_by=["region"])
    assert {row.group_by["region"]: row.value for row in by_region} == {"eu": 2.0, "us": 1.0}
    both = await store.query("sample_unique_count", group_by=["region", "tier"])
    assert len(both) == 3
    assert [row.value for row in await store.query("sample_unique_count")] == [2.0]


async def test_without_window_size_one_row_spans_the_used_minutes(store: SqlMeterStore) -> None:
    await store.ingest(
        [tokens(5, at=T0 + minutes(3) + timedelta(seconds=30)), tokens(7, at=T0 + minutes(90))]
    )

    rows = await store.query("llm_tokens_in")

    assert rows == [
        QueryRow(
            value=12.0,
            window_start=T0 + minutes(3),
            window_end=T0 + minutes(91),
            subject=None,
            group_by={},
        )
    ]


async def test_without_window_size_the_window_is_from_and_to(store: SqlMeterStore) -> None:
    await store.ingest([tokens(5, at=T0 + minutes(3))])

    rows = await store.query("llm_tokens_in", from_=T0, to=T0 + HOUR)

    assert values(rows) == [(T0, T0 + HOUR, 5.0)]


async def test_from_is_inclusive_and_to_exclusive(store: SqlMeterStore) -> None:
    await store.ingest(
        [
            tokens(1, at=T0 - timedelta(microseconds=1)),
            tokens(10, at=T0),
            tokens(100, at=T0 + HOUR - timedelta(microseconds=1)),
            tokens(1000, at=T0 + HOUR),
        ]
    )

    rows = await store.query("llm_tokens_in", from_=T0, to=T0 + HOUR)

    assert [row.value for row in rows] == [110.0]


async def test_a_window_cut_by_the_range_keeps_its_bounds_and_counts_inside(
    store: SqlMeterStore,
) -> None:
    await store.ingest([tokens(1, at=T0 + minutes(10)), tokens(10, at=T0 + minutes(40))])

    rows = await store.query("llm_tokens_in", from_=T0 + minutes(30), window_size="HOUR")

    assert values(rows) == [(T0, T0 + HOUR, 10.0)]


async def test_misaligned_bounds_are_refused(store: SqlMeterStore) -> None:
    with pytest.raises(InvalidInput, match="whole minute"):
        await store.query("llm_tokens_in", from_=T0 + timedelta(seconds=30))


async def test_an_unknown_meter_is_not_found(store: SqlMeterStore) -> None:
    with pytest.raises(NotFound):
        await store.query("no_such_meter")


async def test_only_windows_with_usage_are_returned_in_time_order(store: SqlMeterStore) -> None:
    await store.ingest(
        [
            tokens(4, at=T0 + 5 * HOUR),
            tokens(1, at=T0 + minutes(1)),
            tokens(2, at=T0 + minutes(59)),
            tokens(3, at=T0 + 2 * HOUR + minutes(30)),
        ]
    )

    rows = await store.query("llm_tokens_in", window_size="HOUR")

    assert values(rows) == [
        (T0, T0 + HOUR, 3.0),
        (T0 + 2 * HOUR, T0 + 3 * HOUR, 3.0),
        (T0 + 5 * HOUR, T0 + 6 * HOUR, 4.0),
    ]


@pytest.mark.parametrize(
    ("window_size", "expected"),
    [
        (
            "MINUTE",
            [
                (utc(2026, 3, 2, 0, 0), utc(2026, 3, 2, 0, 1), 1.0),
                (utc(2026, 3, 2, 0, 59), utc(2026, 3, 2, 1, 0), 2.0),
                (utc(2026, 3, 2, 23, 59), utc(2026, 3, 3, 0, 0), 4.0),
                (utc(2026, 3, 31, 23, 59), utc(2026, 4, 1, 0, 0), 8.0),
                (utc(2026, 4, 1, 0, 0), utc(2026, 4, 1, 0, 1), 16.0),
            ],
        ),
        (
            "HOUR",
            [
                (utc(2026, 3, 2, 0), utc(2026, 3, 2, 1), 3.0),
                (utc(2026, 3, 2, 23), utc(2026, 3, 3, 0), 4.0),
                (utc(2026, 3, 31, 23), utc(2026, 4, 1, 0), 8.0),
                (utc(2026, 4, 1, 0), utc(2026, 4, 1, 1), 16.0),
            ],
        ),
        (
            "DAY",
            [
                (utc(2026, 3, 2), utc(2026, 3, 3), 7.0),
                (utc(2026, 3, 31), utc(2026, 4, 1), 8.0),
                (utc(2026, 4, 1), utc(2026, 4, 2), 16.0),
            ],
        ),
        (
            "MONTH",
            [
                (utc(2026, 3, 1), utc(2026, 4, 1), 15.0),
                (utc(2026, 4, 1), utc(2026, 5, 1), 16.0),
            ],
        ),
    ],
)
async def test_windows_in_utc(
    store: SqlMeterStore, window_size: str, expected: list[tuple[datetime, datetime, float]]
) -> None:
    await store.ingest(
        [
            tokens(1, at=utc(2026, 3, 2, 0, 0, 30)),
            tokens(2, at=utc(2026, 3, 2, 0, 59, 59)),
            tokens(4, at=utc(2026, 3, 2, 23, 59)),
            tokens(8, at=utc(2026, 3, 31, 23, 59, 59)),
            tokens(16, at=utc(2026, 4, 1)),
        ]
    )

    assert values(await store.query("llm_tokens_in", window_size=window_size)) == expected


async def test_days_in_a_dst_zone_start_at_local_midnight_and_last_23_or_25_hours(
    store: SqlMeterStore,
) -> None:
    # Berlin: clocks go forward on 2026-03-29 (a 23-hour day), back on 2026-10-25 (25 hours).
    await store.ingest(
        [
            tokens(1, at=utc(2026, 3, 28, 22, 59)),  # 23:59 on the 28th, local
            tokens(2, at=utc(2026, 3, 28, 23, 0)),  # 00:00 on the 29th
            tokens(4, at=utc(2026, 3, 29, 21, 59)),  # 23:59 on the 29th (summer time)
            tokens(8, at=utc(2026, 3, 29, 22, 0)),  # 00:00 on the 30th
            tokens(16, at=utc(2026, 10, 24, 22, 0)),  # 00:00 on 10-25 (summer time)
            tokens(32, at=utc(2026, 10, 25, 22, 59)),  # 23:59 on 10-25 (winter time)
        ]
    )

    rows = await store.query("llm_tokens_in", window_size="DAY", window_time_zone="Europe/Berlin")

    assert values(rows) == [
        (utc(2026, 3, 27, 23), utc(2026, 3, 28, 23), 1.0),
        (utc(2026, 3, 28, 23), utc(2026, 3, 29, 22), 6.0),
        (utc(2026, 3, 29, 22), utc(2026, 3, 30, 22), 8.0),
        (utc(2026, 10, 24, 22), utc(2026, 10, 25, 23), 48.0),
    ]


async def test_months_in_a_zone_start_at_local_midnight_of_the_first(
    store: SqlMeterStore,
) -> None:
    await store.ingest(
        [
            tokens(1, at=utc(2026, 2, 28, 22, 59)),  # still February in Berlin
            tokens(2, at=utc(2026, 2, 28, 23, 0)),  # March 1st, 00:00 in Berlin
            tokens(4, at=utc(2026, 3, 31, 21, 59)),  # March 31st, 23:59 (summer time)
            tokens(8, at=utc(2026, 3, 31, 22, 0)),  # April 1st, 00:00
        ]
    )

    rows = await store.query("llm_tokens_in", window_size="MONTH", window_time_zone="Europe/Berlin")

    assert values(rows) == [
        (utc(2026, 1, 31, 23), utc(2026, 2, 28, 23), 1.0),
        (utc(2026, 2, 28, 23), utc(2026, 3, 31, 22), 6.0),
        (utc(2026, 3, 31, 22), utc(2026, 4, 30, 22), 8.0),
    ]


async def test_hours_follow_the_zone_offset_and_the_repeated_hour_is_two_windows(
    store: SqlMeterStore,
) -> None:
    await store.ingest(
        [
            tokens(1, at=utc(2026, 10, 25, 0, 10)),  # 02:10 summer time
            tokens(2, at=utc(2026, 10, 25, 1, 10)),  # 02:10 again, winter time
        ]
    )

    berlin = await store.query(
        "llm_tokens_in", window_size="HOUR", window_time_zone="Europe/Berlin"
    )
    kolkata = await store.query(
        "llm_tokens_in", window_size="HOUR", window_time_zone="Asia/Kolkata"
    )

    assert values(berlin) == [
        (utc(2026, 10, 25, 0), utc(2026, 10, 25, 1), 1.0),
        (utc(2026, 10, 25, 1), utc(2026, 10, 25, 2), 2.0),
    ]
    assert values(kolkata) == [
        (utc(2026, 10, 24, 23, 30), utc(2026, 10, 25, 0, 30), 1.0),
        (utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1, 30), 2.0),
    ]


async def test_a_bounded_zoned_query_only_sees_its_range(store: SqlMeterStore) -> None:
    await store.ingest([tokens(1, at=utc(2026, 3, 1, 12)), tokens(2, at=utc(2026, 3, 3, 12))])

    rows = await store.query(
        "llm_tokens_in",
        from_=utc(2026, 3, 2, 23),
        to=utc(2026, 3, 4, 23),
        window_size="DAY",
        window_time_zone="Europe/Berlin",
    )

    assert values(rows) == [(utc(2026, 3, 2, 23), utc(2026, 3, 3, 23), 2.0)]


async def test_subjects_filter_and_split_the_rows(store: SqlMeterStore) -> None:
    await store.ingest(
        [
            tokens(1, subject="a"),
            tokens(2, subject="b"),
            tokens(4, subject="c"),
            tokens(8, subject="a", at=T0 + HOUR),
        ]
    )

    one = await store.query("llm_tokens_in", subjects=["a"])
    two = await store.query("llm_tokens_in", subjects=["a", "b"], window_size="HOUR")
    everyone = await store.query("llm_tokens_in")

    assert [(row.subject, row.value) for row in one] == [("a", 9.0)]
    assert [(row.window_start, row.subject, row.value) for row in two] == [
        (T0, "a", 1.0),
        (T0, "b", 2.0),
        (T0 + HOUR, "a", 8.0),
    ]
    assert [(row.subject, row.value) for row in everyone] == [(None, 15.0)]
    assert await store.query("llm_tokens_in", subjects=["nobody"]) == []


async def test_group_by_subject_and_meter_keys(store: SqlMeterStore) -> None:
    await store.ingest(
        [
            tokens(1, subject="a", model="m1"),
            tokens(2, subject="a", model="m2"),
            tokens(4, subject="b", model="m1"),
        ]
    )

    by_model = await store.query("llm_tokens_in", group_by=["model"])
    by_both = await store.query("llm_tokens_in", group_by=["subject", "model"])

    assert [(row.subject, row.group_by, row.value) for row in by_model] == [
        (None, {"model": "m1"}, 5.0),
        (None, {"model": "m2"}, 2.0),
    ]
    assert [(row.subject, row.group_by, row.value) for row in by_both] == [
        ("a", {"model": "m1"}, 1.0),
        ("a", {"model": "m2"}, 2.0),
        ("b", {"model": "m1"}, 4.0),
    ]


async def test_grouping_by_some_keys_merges_the_others(store: SqlMeterStore) -> None:
    await store.ingest(
        [
            sample(1, region="eu", tier="gold"),
            sample(2, region="eu", tier="free"),
            sample(4, region=None, tier="free"),
            sample(8, region="us", tier="gold", at=T0 + minutes(1)),
        ]
    )

    rows = await store.query("sample_max", group_by=["region"])
    latest = await store.query("sample_latest", group_by=["tier"])

    assert [(row.group_by, row.value) for row in rows] == [
        ({"region": None}, 4.0),
        ({"region": "eu"}, 2.0),
        ({"region": "us"}, 8.0),
    ]
    assert [(row.group_by, row.value) for row in latest] == [
        ({"tier": "free"}, 4.0),
        ({"tier": "gold"}, 8.0),
    ]


async def test_totals_by_subject(store: SqlMeterStore) -> None:
    await store.ingest(
        [tokens(1, 10, subject="a"), tokens(2, 20, subject="b"), tokens(3, 30, subject="a")]
    )

    assert await store.totals_by_subject("llm_tokens_out") == {"a": 40.0, "b": 20.0}


@pytest.mark.parametrize("slug", ["sample_sum", "sample_min", "sample_max", "sample_latest"])
@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Asia/Kolkata"])
async def test_hour_and_day_windows_agree_with_minutes_regrouped(
    store: SqlMeterStore, slug: str, zone: str
) -> None:
    # Hourly rollups answer whole-hour zones; Kolkata (+05:30) reads minutes. Both must agree
    # with minute windows regrouped here, across the autumn DST change in Berlin.
    rng = random.Random(7)
    start = utc(2026, 10, 24, 20)
    events = [
        sample(
            rng.choice([rng.randint(-50, 50), "12.5", None]),
            at=start + timedelta(seconds=rng.randrange(30 * 3600)),
            subject=rng.choice(["a", "b"]),
            region=rng.choice(["eu", "us", None]),
        )
        for _ in range(600)
    ]
    for first in range(0, 600, 150):
        await store.ingest(events[first : first + 150])
    by_minute = await store.query(slug, group_by=["subject", "region"], window_size="MINUTE")
    local = ZoneInfo(zone)

    def hour(at: datetime) -> datetime:
        return at.replace(minute=0)

    def day(at: datetime) -> datetime:
        return at.replace(hour=0, minute=0)

    for window_size, floor in (("HOUR", hour), ("DAY", day)):
        expected: dict[tuple[datetime, str | None, str | None], list[QueryRow]] = {}
        for row in by_minute:
            window = floor(row.window_start.astimezone(local)).astimezone(UTC)
            expected.setdefault((window, row.subject, row.group_by["region"]), []).append(row)
        rows = await store.query(
            slug, group_by=["subject", "region"], window_size=window_size, window_time_zone=zone
        )

        assert len(rows) == len(expected)
        for row in rows:
            parts = expected[row.window_start, row.subject, row.group_by["region"]]
            if slug == "sample_sum":
                assert row.value == pytest.approx(sum(part.value for part in parts))
            elif slug == "sample_min":
                assert row.value == min(part.value for part in parts)
            elif slug == "sample_max":
                assert row.value == max(part.value for part in parts)
            else:
                assert row.value == max(parts, key=lambda part: part.window_start).value


async def test_without_a_range_the_usage_stored_is_what_the_limits_bound(
    engine: AsyncEngine,
) -> None:
    """No ``from``/``to``: the range is the usage stored, so its length is bounded, and so is
    the number of windows that hold usage (a total is never refused)."""
    store = SqlMeterStore(engine, TEST_METERS, query_limits=QueryLimits(3, 400))
    await store.ingest([tokens(1, at=T0 + minutes(m)) for m in (0, 1, 2, 3)])

    with pytest.raises(QueryTooLarge, match="at most 3 windows; the usage stored is in 4"):
        await store.query("llm_tokens_in", window_size="MINUTE")
    assert values(await store.query("llm_tokens_in", window_size="HOUR")) == [(T0, T0 + HOUR, 4.0)]
    with pytest.raises(QueryTooLarge, match="up to 5: narrow 'from' and 'to'"):
        await store.query("llm_tokens_in", window_size="MINUTE", from_=T0, to=T0 + minutes(5))

    await store.ingest([tokens(2, at=T0 + timedelta(days=401))])
    with pytest.raises(QueryTooLarge, match="at most 400 days; the usage stored spans 402"):
        await store.query("llm_tokens_in", window_size="DAY", window_time_zone="Europe/Berlin")
    assert values(await store.query("llm_tokens_in"))[0][2] == 6.0
