"""A follower that ends when the access of the client it serves lapses.

It waits for events no longer than its ``AccessWatch`` allows, re-checks the access between
deliveries, and raises ``AccessLapsed`` (``key_revoked``, ``key_expired``,
``tenant_suspended``) instead of delivering anything once it no longer holds; the SSE stream
turns that into its final ``error`` event.
"""

from collections.abc import AsyncIterator, Sequence

from kgents.sessions.ports import FollowedEvent, Follower, each_event
from kgents.tenancy.access import AccessWatch


class WatchedFollower:
    """``follower``, cut off by ``watch``."""

    def __init__(self, follower: Follower, watch: AccessWatch) -> None:
        self._follower = follower
        self._watch = watch

    def __aiter__(self) -> AsyncIterator[FollowedEvent]:
        return each_event(self)

    async def next_batch(self, wait_seconds: float | None = None) -> Sequence[FollowedEvent]:
        await self._watch.check_if_due()
        due = self._watch.seconds_until_due()
        wait = due if wait_seconds is None else min(wait_seconds, due)
        batch = await self._follower.next_batch(wait)
        await self._watch.check_if_due()
        return batch

    def wake(self) -> None:
        self._follower.wake()

    async def aclose(self) -> None:
        await self._follower.aclose()
