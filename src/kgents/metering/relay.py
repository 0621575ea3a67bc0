"""The outbox relay: publishes stored usage events to JetStream, then marks them sent.

A row is marked sent only after JetStream acknowledged it. If the process dies in between, the
row is published again on the next pass and JetStream's ``Nats-Msg-Id`` dedupe (and, behind it,
the meter store's unique key) absorb the repeat: an event is never lost and never counted twice.
"""

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from kgents.clock import utc_now
from kgents.errors import KgentsError
from kgents.records import UsageEvent

logger = logging.getLogger(__name__)

BATCH_SIZE = 500


class OutboxStore(Protocol):
    async def pending(self, *, limit: int) -> Sequence[UsageEvent]: ...

    async def mark_sent(self, keys: Sequence[tuple[str, str]], *, at: datetime) -> None: ...


class UsagePublisher(Protocol):
    async def publish_usage(self, events: Sequence[UsageEvent]) -> None:
        """Publish and wait until every event is acknowledged."""
        ...


class OutboxRelay:
    def __init__(self, *, outbox: OutboxStore, publisher: UsagePublisher) -> None:
        self._outbox = outbox
        self._publisher = publisher
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """New rows were committed: relay them now rather than at the next poll."""
        self._wake.set()

    async def relay_once(self, *, limit: int = BATCH_SIZE) -> int:
        """Publish one batch of pending events; return how many were relayed."""
        events = await self._outbox.pending(limit=limit)
        if not events:
            return 0
        await self._publisher.publish_usage(events)
        await self._outbox.mark_sent([(e.source, e.id) for e in events], at=utc_now())
        return len(events)

    async def drain(self) -> int:
        """Relay until nothing is pending."""
        total = 0
        while relayed := await self.relay_once():
            total += relayed
        return total

    async def run(self, *, poll_seconds: float = 0.5) -> None:
        """Relay forever: on ``notify`` or every ``poll_seconds``; failures are retried."""
        while True:
            try:
                await self.drain()
            except KgentsError as exc:
                logger.warning("outbox relay postponed: %s", exc)
            except Exception:
                logger.exception("outbox relay failed; retrying")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=poll_seconds)
            except TimeoutError:
                pass
