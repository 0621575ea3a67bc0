"""``GET /v1/usage``: the calling tenant's usage, token quota and rate-limit headroom (API key).

Query parameters follow OpenMeter's meter query: ``from`` (inclusive) and ``to`` (exclusive),
RFC 3339 on whole minutes; ``windowSize`` ``MINUTE|HOUR|DAY|MONTH``; ``windowTimeZone`` (IANA).
Defaults: ``to`` is the end of the current minute, ``from`` 30 days before ``to``, DAY windows in
UTC. Every configured meter is queried for the tenant's own subject, grouped by the meter's group
keys (tokens by model); only windows with usage have rows.

``quota`` is the plan's tokens per calendar month (UTC) with what the tenant's turns used; it is
read from the turns themselves, so it is never behind the meters. The meters and the quota are
read in one transaction (``kgents.store.usage_repo``), so they show the same moment. ``rate_limit``
is the calling key's requests-per-minute window after counting this request.
"""

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from pydantic import AwareDatetime

from kgents.api.deps import PlatformDep, UsageDep
from kgents.api.schemas import ErrorBody
from kgents.api.usage_schemas import (
    MeterUsagePublic,
    QuotaPublic,
    RateLimitPublic,
    UsagePublic,
)
from kgents.clock import utc_now
from kgents.metering.meters import WindowSize
from kgents.metering.query import DEFAULT_SPAN
from kgents.tenancy.quota import month_bounds, quota_status
from kgents.tenancy.rate_limit import RateStatus

router = APIRouter(prefix="/v1/usage", tags=["usage"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Range too long for the windows (query_too_large)"},
    401: {"model": ErrorBody, "description": "Missing, invalid, revoked or expired API key"},
    403: {
        "model": ErrorBody,
        "description": "Tenant suspended, or no 'usage' scope (scope_missing)",
    },
    422: {"model": ErrorBody, "description": "Invalid range, window size or time zone"},
    429: {"model": ErrorBody, "description": "Rate limit of the API key exceeded"},
    503: {"model": ErrorBody, "description": "Database unavailable; retry shortly"},
}


def default_range(
    from_: datetime | None, to: datetime | None, *, now: datetime
) -> tuple[datetime, datetime]:
    """``[from, to)`` with the defaults filled in: up to the end of this minute, 30 days long."""
    end = to if to is not None else now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = from_ if from_ is not None else end - DEFAULT_SPAN
    return start.astimezone(UTC), end.astimezone(UTC)


@router.get("", responses=_ERRORS)
async def get_usage(
    request: Request,
    principal: UsageDep,
    platform: PlatformDep,
    from_: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    to: AwareDatetime | None = None,
    window_size: Annotated[WindowSize, Query(alias="windowSize")] = WindowSize.DAY,
    window_time_zone: Annotated[
        str, Query(alias="windowTimeZone", min_length=1, max_length=64)
    ] = "UTC",
) -> UsagePublic:
    """The tenant's usage per meter and window, its token quota and its rate-limit headroom."""
    tenant_id = principal.tenant.id
    now = utc_now()
    start, end = default_range(from_, to, now=now)
    period_start, _ = month_bounds(now)
    usage = await platform.usage.tenant_usage(
        tenant_id=tenant_id,
        meters=platform.meters.meters,
        from_=start,
        to=end,
        window_size=window_size,
        window_time_zone=window_time_zone,
        tokens_since=period_start,
    )
    quota = quota_status(plan=principal.plan, used=usage.tokens_used, at=now)
    rate: RateStatus | None = getattr(request.state, "rate_status", None)
    return UsagePublic(
        tenant_id=tenant_id,
        plan=principal.tenant.plan,
        from_=start,
        to=end,
        window_size=window_size,
        window_time_zone=window_time_zone,
        meters=[MeterUsagePublic.of(meter, rows) for meter, rows in usage.meters],
        quota=QuotaPublic.of(quota),
        rate_limit=RateLimitPublic.of(rate) if rate is not None else None,
    )
