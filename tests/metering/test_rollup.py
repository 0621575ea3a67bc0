"""What counts as a value, and the per-minute state events fold into (pure code)."""

import math
from datetime import timedelta
from typing import Any

import pytest

from kgents.metering.meters import DEFAULT_METERS
from kgents.metering.rollup import (
    MeterSet,
    RollupState,
    dimension_value,
    epoch_minute,
    minute_start,
    numeric_value,
)
from tests.metering.support import T0, TEST_METERS, sample, tokens


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (3, 3.0),
        (-2.5, -2.5),
        ("12", 12.0),
        (" 1.5e3 ", 1500.0),
        ("-.5", -0.5),
        ("+7.", 7.0),
        ("abc", None),
        ("", None),
        ("1_000", None),
        ("0x10", None),
        ("NaN", None),
        ("inf", None),
        (math.nan, None),
        (math.inf, None),
        (10**400, None),
        (True, None),
        (None, None),
        ([1], None),
        ({"n": 1}, None),
    ],
)
def test_numbers_and_numeric_strings_count_everything_else_is_skipped(
    raw: Any, expected: float | None
) -> None:
    assert numeric_value(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("gpt-4o", "gpt-4o"),
        (7, "7"),
        (1.5, "1.5"),
        (True, "true"),
        ("", None),
        (None, None),
        ([1], None),
        ({"a": 1}, None),
        (math.nan, None),
        ("x" * 300, "x" * 256),
    ],
)
def test_group_and_distinct_values_are_strings(raw: Any, expected: str | None) -> None:
    assert dimension_value(raw) == expected


def test_epoch_minutes_floor_and_round_trip() -> None:
    just_before = T0 - timedelta(microseconds=1)

    assert minute_start(epoch_minute(T0)) == T0
    assert epoch_minute(just_before) == epoch_minute(T0) - 1


def test_state_merges_in_any_order_to_the_same_result() -> None:
    readings = [(5.0, 10), (None, 11), (2.0, 30), (9.0, 30), (4.0, 20)]
    forward, backward, merged = RollupState(), RollupState(), RollupState()
    for value, at in readings:
        forward.add(value, at)
    for value, at in reversed(readings):
        backward.add(value, at)
    for value, at in readings:
        single = RollupState()
        single.add(value, at)
        merged.merge(single)

    assert forward == backward == merged
    assert forward.event_count == 5
    assert forward.value_count == 4
    assert forward.value_sum == 20.0
    assert (forward.value_min, forward.value_max) == (2.0, 9.0)
    # Latest is the last in time; a tie in time goes to the larger value.
    assert (forward.latest_us, forward.latest_value) == (30, 9.0)


def test_events_fold_into_minutes_per_meter_subject_and_group() -> None:
    meters = MeterSet(TEST_METERS)
    delta = meters.rollup(
        [
            sample(2, at=T0 + timedelta(seconds=5)),
            sample("3", at=T0 + timedelta(seconds=50)),
            sample("x", at=T0 + timedelta(seconds=70)),
            sample(4, subject="tenant-b", region=None),
            tokens(10, 1, model="m1"),
            tokens(20, 2, model="m1", at=T0 + timedelta(seconds=59)),
        ]
    )
    minute = epoch_minute(T0)
    eu_gold = '{"region":"eu","tier":"gold"}'

    first = delta.states["sample_sum", "tenant-a", eu_gold, minute]
    assert (first.event_count, first.value_count, first.value_sum) == (2, 2, 5.0)
    skipped = delta.states["sample_sum", "tenant-a", eu_gold, minute + 1]
    assert (skipped.event_count, skipped.value_count) == (1, 0)
    no_region = delta.states["sample_sum", "tenant-b", '{"region":null,"tier":"gold"}', minute]
    assert no_region.value_sum == 4.0
    assert delta.states["llm_tokens_in", "tenant-a", '{"model":"m1"}', minute].value_sum == 30.0
    assert delta.states["llm_tokens_out", "tenant-a", '{"model":"m1"}', minute].value_sum == 3.0
    assert ("sample_unique_count", "tenant-a", eu_gold, minute, "2") in delta.distinct
    assert ("sample_unique_count", "tenant-a", eu_gold, minute + 1, "x") in delta.distinct


def test_events_of_no_meter_are_ignored() -> None:
    meters = MeterSet(DEFAULT_METERS)

    assert not meters.rollup([sample(1)]).states
