"""Token quotas per tenant and calendar month (UTC).

Usage counts the tokens of the tenant's turns in the period: the same numbers the ``llm.tokens``
meters are built from (``kgents metering reconcile`` proves they agree), read from the database
so enforcement is not behind by the relay and processor. A turn may start while usage is below
the limit, so concurrent turns can overshoot by at most what the turns already running generate.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from kgents.clock import utc_now
from kgents.config import PlanConfig
from kgents.errors import QuotaExceeded


class TokenLedger(Protocol):
    async def tokens_used(self, tenant_id: str, *, since: datetime) -> int:
        """Tokens in and out of the tenant's finished turns started in the calendar month
        (UTC) that ``since`` begins (``month_bounds(...)[0]``)."""
        ...


@dataclass(frozen=True, slots=True)
class QuotaStatus:
    period_start: datetime
    period_end: datetime
    limit: int | None
    used: int

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(0, self.limit - self.used)


def month_bounds(moment: datetime) -> tuple[datetime, datetime]:
    """The calendar month (UTC) containing ``moment``: [start, end)."""
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def quota_status(*, plan: PlanConfig, used: int, at: datetime) -> QuotaStatus:
    """The quota of the period containing ``at``, in which the tenant's turns used ``used``
    tokens (counted from the period's start, ``month_bounds(at)[0]``)."""
    start, end = month_bounds(at)
    return QuotaStatus(period_start=start, period_end=end, limit=plan.tokens_per_month, used=used)


class TokenQuota:
    def __init__(self, ledger: TokenLedger) -> None:
        self._ledger = ledger

    async def status(self, *, tenant_id: str, plan: PlanConfig) -> QuotaStatus:
        now = utc_now()
        used = await self._ledger.tokens_used(tenant_id, since=month_bounds(now)[0])
        return quota_status(plan=plan, used=used, at=now)

    async def check(self, *, tenant_id: str, plan: PlanConfig) -> QuotaStatus:
        """Raise ``QuotaExceeded`` when the period's tokens are used up."""
        return require_tokens_left(await self.status(tenant_id=tenant_id, plan=plan))


def require_tokens_left(status: QuotaStatus) -> QuotaStatus:
    """``status``, or ``QuotaExceeded`` when its period's tokens are used up."""
    if status.limit is not None and status.used >= status.limit:
        raise QuotaExceeded(
            f"the plan's {status.limit:,} tokens for this month are used up; "
            f"the quota renews at {status.period_end.isoformat()}"
        )
    return status
