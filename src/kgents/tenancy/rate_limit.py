"""Requests per minute per API key, counted in shared storage so the limit holds across replicas.

A fixed one-minute window per key: the first request of a minute opens the window and every
request increments it atomically in the database. Headers tell the client where it stands.
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


class RateLimiter:
    def __init__(self, counter: RequestCounter) -> None:
        self._counter = counter

    async def hit(self, *, key_id: str, limit: int, now: datetime | None = None) -> RateStatus:
        """Count one request; raise ``RateLimited`` (with the status) when over ``limit``."""
        now = now or utc_now()
        window_start = now.replace(second=0, microsecond=0)
        reset_at = window_start + WINDOW
        count = await self._counter.increment(key_id, window_start=window_start)
        status = RateStatus(limit=limit, remaining=max(0, limit - count), reset_at=reset_at)
        if count > limit:
            retry_after = max(1, int((reset_at - now).total_seconds() + 0.999))
            raise RateLimitExceeded(status, retry_after_seconds=retry_after)
        return status


class RateLimitExceeded(RateLimited):
    def __init__(self, status: RateStatus, *, retry_after_seconds: int) -> None:
        super().__init__(
            f"rate limit of {status.limit} requests per minute exceeded",
            retry_after_seconds=retry_after_seconds,
        )
        self.status = status
