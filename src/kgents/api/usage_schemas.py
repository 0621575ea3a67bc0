"""Response models of ``GET /v1/usage``: a tenant's meters, token quota and rate-limit headroom."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from kgents.metering.meters import Meter, MeterAggregation, WindowSize
from kgents.metering.query import QueryRow
from kgents.tenancy.quota import QuotaStatus
from kgents.tenancy.rate_limit import RateStatus


class UsageRowPublic(BaseModel):
    """One window of one meter (the subject is the calling tenant)."""

    value: float
    window_start: datetime
    window_end: datetime
    group_by: dict[str, str | None]

    @classmethod
    def of(cls, row: QueryRow) -> "UsageRowPublic":
        return cls(
            value=row.value,
            window_start=row.window_start,
            window_end=row.window_end,
            group_by=dict(row.group_by),
        )


class MeterUsagePublic(BaseModel):
    slug: str
    description: str | None
    aggregation: MeterAggregation
    event_type: str
    group_by: list[str] = Field(description="The meter's group keys: each row has their values.")
    data: list[UsageRowPublic] = Field(description="Windows with usage only, in time order.")

    @classmethod
    def of(cls, meter: Meter, rows: list[QueryRow]) -> "MeterUsagePublic":
        return cls(
            slug=meter.slug,
            description=meter.description,
            aggregation=meter.aggregation,
            event_type=meter.event_type,
            group_by=list(meter.group_by),
            data=[UsageRowPublic.of(row) for row in rows],
        )


class QuotaPublic(BaseModel):
    """Tokens (in and out) of the plan for the current calendar month (UTC)."""

    period_start: datetime
    period_end: datetime
    limit: int | None = Field(description="Tokens per month of the plan; null = unlimited.")
    used: int
    remaining: int | None

    @classmethod
    def of(cls, status: QuotaStatus) -> "QuotaPublic":
        return cls(
            period_start=status.period_start,
            period_end=status.period_end,
            limit=status.limit,
            used=status.used,
            remaining=status.remaining,
        )


class RateLimitPublic(BaseModel):
    """The calling key's requests-per-minute window, this request included."""

    limit: int
    remaining: int
    reset: datetime

    @classmethod
    def of(cls, status: RateStatus) -> "RateLimitPublic":
        return cls(limit=status.limit, remaining=status.remaining, reset=status.reset_at)


class UsagePublic(BaseModel):
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    tenant_id: str
    plan: str
    from_: datetime = Field(alias="from")
    to: datetime
    window_size: WindowSize
    window_time_zone: str
    meters: list[MeterUsagePublic]
    quota: QuotaPublic
    rate_limit: RateLimitPublic | None
