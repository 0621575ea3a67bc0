"""The outbox relay: claims stored usage events, publishes them to JetStream, marks them sent.

Replicas share the outbox: each claims the rows it publishes (``claim_stored``), so two
replicas never publish the same rows; the duplicate window stays as the second line.

A row is marked sent only after JetStream acknowledged it. If the process dies in between, the
row is published again on the next pass and JetStream's ``Nats-Msg-Id`` dedupe (and, behind it,
the meter store's unique key) absorb the repeat: an event is never lost and never counted twice.
"""

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from kgents.clock import utc_now
from kgents.errors import KgentsError
from kgents.metering.cancellation import raise_if_cancelled

logger = logging.getLogger(__name__)

BATCH_SIZE = 500
CLAIM_SECONDS = 120.0
"""How long a relay holds the rows it publishes: well beyond a publish retried through a NATS
failover. A relay that died holds them no longer than this; one that outlives it may publish
rows another relay publishes too, which JetStream's duplicate window absorbs."""


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
    async def claim_stored(
        self, *, limit: int, now: datetime, until: datetime
    ) -> Sequence[StoredUsageEvent]:
        """Hold the oldest unsent events that nobody holds until ``until`` (at most
        ``limit``) and return them; another relay never gets the same ones meanwhile."""
        ...

    async def release(self, keys: Sequence[tuple[str, str]]) -> None:
        """Give up the claims on these unsent events."""
        ...

    async def mark_sent(self, keys: Sequence[tuple[str, str]], *, at: datetime) -> None: ...


class UsagePublisher(Protocol):
    async def publish_stored(self, events: Sequence[StoredUsageEvent]) -> None:
        """Publish and wait until every event is acknowledged."""
        ...


class OutboxRelay:
    def __init__(
        self,
        *,
        outbox: OutboxStore,
        publisher: UsagePublisher,
        claim_seconds: float = CLAIM_SECONDS,
    ) -> None:
        self._outbox = outbox
        self._publisher = publisher
        self._claim_seconds = claim_seconds
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """New rows were committed: relay them now rather than at the next poll."""
        self._wake.set()

    async def relay_once(self, *, limit: int = BATCH_SIZE) -> int:
        """Claim, publish and mark sent one batch of pending events; return how many."""
        now = utc_now()
        events = await self._outbox.claim_stored(
            limit=limit, now=now, until=now + timedelta(seconds=self._claim_seconds)
        )
        if not events:
            return 0
        keys = [(e.source, e.id) for e in events]
        try:
            await self._publisher.publish_stored(events)
        except BaseException:
            # Failed or cancelled: let any relay take them again now, not when the claim ends.
            await asyncio.shield(self._release(keys))
            raise
        await self._outbox.mark_sent(keys, at=utc_now())
        return len(events)

    async def _release(self, keys: list[tuple[str, str]]) -> None:
        try:
            await self._outbox.release(keys)
        except Exception:
            logger.warning("could not release %d outbox claims", len(keys), exc_info=True)

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
