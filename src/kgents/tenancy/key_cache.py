"""A short-lived, in-process cache of API key lookups (key hash -> key and tenant).

Authentication is on every request, and its database read was ~1-3 ms of each one. A cached
lookup is trusted for ``ttl_seconds`` (``KGENTS_API_KEY_CACHE_SECONDS``, default 5, 0 turns
the cache off): a key revoked, a tenant suspended or moved to another plan *by another process*
(another replica, the CLI) is seen here within that time. A change made through this process
clears the cache at once (``TenancyService`` calls ``clear``). Expiry (``expires_at``) is
checked on every request from the cached key, so it is exact. Lookups of unknown keys are not
cached: a new key works at once, and a flood of random keys cannot fill the cache.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

from kgents.records import ApiKey, Tenant

MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class _Entry:
    key: ApiKey
    tenant: Tenant
    expires: float  # on the cache's monotonic clock


class KeyCache:
    """Key hash -> (key, tenant) for ``ttl_seconds``; bounded to ``max_entries``."""

    def __init__(
        self,
        *,
        ttl_seconds: float,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def get(self, key_hash: str) -> tuple[ApiKey, Tenant] | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if entry.expires <= self._clock():
            del self._entries[key_hash]
            return None
        return entry.key, entry.tenant

    def put(self, key_hash: str, key: ApiKey, tenant: Tenant) -> None:
        """Remember a lookup made now (a no-op when the cache is off)."""
        if self._ttl <= 0:
            return
        if len(self._entries) >= self._max and key_hash not in self._entries:
            self._evict()
        self._entries[key_hash] = _Entry(key, tenant, self._clock() + self._ttl)

    def replace_key(self, key_hash: str, key: ApiKey) -> None:
        """Update a cached key (its ``last_used_at``) without extending how long it is trusted."""
        entry = self._entries.get(key_hash)
        if entry is not None:
            self._entries[key_hash] = _Entry(key, entry.tenant, entry.expires)

    @property
    def ttl_seconds(self) -> float:
        """How long a lookup is trusted."""
        return self._ttl

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _evict(self) -> None:
        now = self._clock()
        for key_hash in [h for h, e in self._entries.items() if e.expires <= now]:
            del self._entries[key_hash]
        if len(self._entries) >= self._max:
            # All live: drop the oldest half (dicts keep insertion order).
            for key_hash in list(self._entries)[: self._max // 2 or 1]:
                del self._entries[key_hash]
