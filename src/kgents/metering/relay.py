"""The outbox relay: publishes stored usage events to JetStream, then marks them sent.

A row is marked sent only after JetStream acknowledged it. If the process dies in between, the
row is published again on the next pass and JetStream's ``Nats-Msg-Id`` dedupe (and, behind it,
the meter store's unique key) absorb the repeat: an event is never lost and never counted twice.
"""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from kgents.clock import utc_now
from kgents.errors import KgentsError
from kgents.metering.cancellation import raise_if_cancelled

logger = logging.getLogger(__name__)

BATCH_SIZE = 500


@dataclass(frozen=True, slots=True)
class StoredUsageEvent:
    """A usage event as the outbox holds it, for the relay: ``data`` is the JSON object text it
    was stored as and ``time`` RFC 3339 UTC text, so the event goes on the wire without being
    decoded into Python objects and encoded again."""

    source: str
    id: str
    type: str
    subject: str
    time: str
    data_json: str


class OutboxStore(Protocol):
    async def pending_stored(self, *, limit: int) -> Sequence[StoredUsageEvent]:
        """The oldest unsent events, at most ``limit``."""
        ...

    async def mark_sent(self, keys: Sequence[tuple[str, str]], *, at: datetime) -> None: ...


class UsagePublisher(Protocol):
    async def publish_stored(self, events: Sequence[StoredUsageEvent]) -> None:
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
        events = await self._outbox.pending_stored(limit=limit)
        if not events:
            return 0
        await self._publisher.publish_stored(events)
        await self._outbox.mark_sent([(e.source, e.id) for e in events], at=utc_now())
        return len(events)

    async def drain(self) -> int:
        """Relay until nothing is pending."""
        total = 0
        while relayed := await self.relay_once():
            total += relayed
        return total

    async def run(self, *, poll_seconds: float = 0.5) -> None:
        """Relay until cancelled: on ``notify`` or every ``poll_seconds``; failures are retried.

        A cancellation stops it even when the publisher swallowed it and failed instead (a
        NATS request cancelled as its reply arrived): it is not mistaken for a failure to retry.
        """
        while True:
            raise_if_cancelled()
            try:
                await self.drain()
            except KgentsError as exc:
                raise_if_cancelled()  # not a failure: a cancellation the publisher turned into one
                logger.warning("outbox relay postponed: %s", exc)
            except Exception:
                raise_if_cancelled()
                logger.exception("outbox relay failed; retrying")
            self._wake.clear()
            # ``asyncio.timeout``, not ``wait_for``: in 3.11 ``wait_for`` can swallow a cancel.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(poll_seconds):
                    await self._wake.wait()
