"""Builders shared by the metering tests."""

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from kgents.metering.meters import DEFAULT_METERS, Meter, MeterAggregation
from kgents.records import UsageEvent

T0 = datetime(2026, 3, 2, tzinfo=UTC)
"""A Monday, midnight UTC: the origin of the tests' clocks."""

_ids = itertools.count()

TEST_METERS: tuple[Meter, ...] = (
    *DEFAULT_METERS,
    *(
        Meter(
            slug=f"sample_{aggregation.value.lower()}",
            event_type="sample",
            aggregation=aggregation,
            value_property="$.value",
            group_by={"region": "$.region", "tier": "$.tier"},
        )
        for aggregation in MeterAggregation
    ),
)
"""The defaults plus one meter per aggregation over ``sample`` events grouped by two keys."""


def sample(
    value: Any = 1,
    *,
    at: datetime = T0,
    subject: str = "tenant-a",
    region: str | None = "eu",
    tier: str | None = "gold",
    id: str | None = None,
    source: str = "test",
) -> UsageEvent:
    """A ``sample`` event; ``value``, ``region`` or ``tier`` of ``None`` leave the key out."""
    data: dict[str, Any] = {}
    if value is not None:
        data["value"] = value
    if region is not None:
        data["region"] = region
    if tier is not None:
        data["tier"] = tier
    return UsageEvent(
        id=id or f"sample-{next(_ids)}",
        source=source,
        type="sample",
        subject=subject,
        time=at,
        data=data,
    )


def tokens(
    tokens_in: Any,
    tokens_out: Any = 0,
    *,
    at: datetime = T0,
    subject: str = "tenant-a",
    model: str = "demo",
    id: str | None = None,
) -> UsageEvent:
    return UsageEvent(
        id=id or f"tokens-{next(_ids)}",
        type="llm.tokens",
        subject=subject,
        time=at,
        data={"tokens_in": tokens_in, "tokens_out": tokens_out, "model": model},
    )


def minutes(count: float) -> timedelta:
    return timedelta(minutes=count)
