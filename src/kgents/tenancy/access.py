"""Access that holds only while its key does: the rules, and a watch for long-lived streams.

A request is authenticated once, but a stream (SSE today, a WebSocket later) lives on. An
``AccessWatch`` re-checks its principal's key and tenant whenever ``check_if_due`` is called
after ``interval_seconds`` (the key cache's lifetime: a change made by another process is seen
within about twice that) and at the key's expiry, and raises ``AccessLapsed`` with the code
``key_revoked``, ``key_expired`` or ``tenant_suspended`` once the access no longer holds. The
stream calls it between deliveries and waits no longer than ``seconds_until_due``.
"""

import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from kgents.clock import utc_now
from kgents.errors import AccessLapsed, Unavailable
from kgents.records import ApiKey, Tenant

MIN_INTERVAL_SECONDS = 1.0
"""Re-checks are at least this far apart, also when the key cache is off."""


def lapse_of(key: ApiKey, tenant: Tenant, *, now: datetime) -> AccessLapsed | None:
    """Why ``key`` of ``tenant`` no longer grants access at ``now`` (``None``: it does)."""
    if key.revoked_at is not None:
        return AccessLapsed("API key revoked", code="key_revoked")
    if key.expires_at is not None and key.expires_at <= now:
        return AccessLapsed("API key expired", code="key_expired")
    if tenant.status != "active":
        return AccessLapsed("tenant suspended", code="tenant_suspended")
    return None


Lookup = Callable[[], Awaitable[tuple[ApiKey, Tenant] | None]]
"""Reads the key and its tenant as they are now (``None``: the key is gone)."""


class AccessWatch:
    """Re-checks one principal's access while a stream of theirs stays open."""

    def __init__(
        self,
        *,
        key: ApiKey,
        lookup: Lookup,
        interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._interval = max(MIN_INTERVAL_SECONDS, interval_seconds)
        self._clock = clock
        self._expires_at = key.expires_at
        self._next = clock() + self._interval
        self._lapse: AccessLapsed | None = None

    def seconds_until_due(self) -> float:
        """How long the stream may wait before calling ``check_if_due`` again."""
        due = self._next - self._clock()
        if self._expires_at is not None:
            due = min(due, (self._expires_at - utc_now()).total_seconds())
        return max(0.0, due)

    async def check_if_due(self) -> None:
        """Raise ``AccessLapsed`` if the access no longer holds (looking it up when due).

        A lookup that fails (the database unavailable) keeps the stream open until the next
        one: streams do not all end at a database blip."""
        if self._lapse is not None:
            raise self._lapse
        if self._expires_at is not None and self._expires_at <= utc_now():
            self._lapse = AccessLapsed("API key expired", code="key_expired")
            raise self._lapse
        if self._clock() < self._next:
            return
        self._next = self._clock() + self._interval
        try:
            found = await self._lookup()
        except Unavailable:
            return
        if found is None:
            self._lapse = AccessLapsed("API key revoked", code="key_revoked")
        else:
            key, tenant = found
            self._expires_at = key.expires_at
            self._lapse = lapse_of(key, tenant, now=utc_now())
        if self._lapse is not None:
            raise self._lapse
