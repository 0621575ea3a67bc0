"""Requests per minute per API key, counted in shared storage so the limit holds across replicas.

A fixed one-minute window per key: the first request of a minute opens the window and every
request increments it atomically in the database. Headers tell the client where it stands.
A request that writes anyway (starting a turn) is counted in its own transaction instead
(see ``RateCharge``).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from kgents.clock import utc_now
from kgents.errors import RateLimited

WINDOW = timedelta(minutes=1)


class RequestCounter(Protocol):
    async def increment(self, key_id: str, *, window_start: datetime) -> int:
        """Add one request to the key's window and return the window's count."""
        ...


@dataclass(frozen=True, slots=True)
class RateStatus:
    limit: int
    remaining: int
    reset_at: datetime

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(int(self.reset_at.timestamp())),
        }


def window_of(now: datetime) -> datetime:
    """The start of the one-minute window containing ``now``."""
    return now.replace(second=0, microsecond=0)


def judge(*, count: int, limit: int, now: datetime) -> RateStatus:
    """The status after the window's ``count``-th request; ``RateLimitExceeded`` when over."""
    reset_at = window_of(now) + WINDOW
    status = RateStatus(limit=limit, remaining=max(0, limit - count), reset_at=reset_at)
    if count > limit:
        retry_after = max(1, int((reset_at - now).total_seconds() + 0.999))
        raise RateLimitExceeded(status, retry_after_seconds=retry_after)
    return status


@dataclass(slots=True)
class RateCharge:
    """One request of key ``key_id``, counted by a service in its own transaction.

    ``status`` is set once it is counted (``settle``), also when the request is then refused
    (429 or any other error), so the response can still carry the ``X-RateLimit-*`` headers."""

    key_id: str
    limit: int
    status: RateStatus | None = None

    def settle(self, *, count: int, now: datetime) -> RateStatus:
        """Record where the key stands after the window's ``count``-th request; raise
        ``RateLimitExceeded`` when over the limit (see ``judge``)."""
        try:
            self.status = judge(count=count, limit=self.limit, now=now)
        except RateLimitExceeded as exc:
            self.status = exc.status
            raise
        return self.status


class RateLimiter:
    def __init__(self, counter: RequestCounter) -> None:
        self._counter = counter

    async def hit(self, *, key_id: str, limit: int, now: datetime | None = None) -> RateStatus:
        """Count one request; raise ``RateLimited`` (with the status) when over ``limit``."""
        now = now or utc_now()
        count = await self._counter.increment(key_id, window_start=window_of(now))
        return judge(count=count, limit=limit, now=now)


class RateLimitExceeded(RateLimited):
    def __init__(self, status: RateStatus, *, retry_after_seconds: int) -> None:
        super().__init__(
            f"rate limit of {status.limit} requests per minute exceeded",
            retry_after_seconds=retry_after_seconds,
        )
        self.status = status
