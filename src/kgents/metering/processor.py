"""The metering processor: usage events from the event stream into the meter store, and on to
OpenMeter when one is configured; acknowledged only once both hold them.

One batch at a time (``drain_once``; ``run`` loops over it)::

    fetch up to 100 deliveries (or what came within 1 s)
      -> while the stream says more are waiting, fetch up to 100 more, up to 5 fetches
      -> park the undecodable ones
      -> ingest the rest in one transaction (duplicates are recognised and ignored)
      -> forward the stored ones to OpenMeter, 100 to a CloudEvents batch
      -> ack them

Each fetch is at most 100 events and at most about one second of arrivals: it returns as soon
as it has 100 messages or its one-second wait is over. Only a backlog makes a batch span more
fetches (up to 500 events in one transaction, which the store ingests about twice as fast per
event as 100); when the processor keeps up, a batch is one fetch and latency is unchanged.
Nothing is acknowledged before it is stored (and forwarded), so a crash at any point only
causes a redelivery, which the store's unique ``(source, id)`` and OpenMeter's id dedupe absorb.

What happens on each failure:

- An event that cannot be decoded, or that the store refuses as invalid, is parked in the
  dead-letter table with the reason at once (retrying cannot help) and terminated.
- A batch whose ingest fails is retried one event at a time to isolate the poison event; an
  event that still fails is redelivered later with backoff (``nak``) and parked with its last
  error on its ``max_deliver - 1``-th delivery, keeping one delivery in reserve in case the
  parking itself fails. Nothing is acknowledged without being stored or parked.
- When the store is down altogether (a cheap read fails too) or OpenMeter is unavailable
  (5xx, 429, timeouts, refused connections, after the sink's own quick retries), the batch is
  *held*: retried with exponential backoff and jitter, for as long as it takes. Throughout a
  batch, ``in_progress`` restarts its messages' ack wait every third of it, so a slow or absent
  store or OpenMeter neither triggers redeliveries nor uses up ``max_deliver``; new events wait
  in the stream. If the processor stops meanwhile, the batch is handed back (``nak``) for
  another replica.
- OpenMeter refusing a batch as invalid (400, 413, 422) splits it: events are sent one by
  one and those still refused are parked with OpenMeter's answer (they are counted locally;
  the dead letter records that they were not forwarded).
"""

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from kgents.clock import utc_now
from kgents.errors import InvalidInput, KgentsError
from kgents.metering.cancellation import raise_if_cancelled
from kgents.metering.ports import Delivery, MeteringStore, UsageSink, UsageSource
from kgents.records import UsageEvent

logger = logging.getLogger(__name__)

BATCH_SIZE = 100
FETCHES_PER_BATCH = 5
"""At most this many fetches of ``BATCH_SIZE`` go into one transaction (when a backlog waits);
their sum stays well under the consumer's ``max_ack_pending`` (1,000)."""
MAX_WAIT_SECONDS = 1.0
BACKLOG_ANSWER_SECONDS = 5.0
"""A fetch made because the stream reported a backlog takes only what is pending (``no_wait``:
nothing, if another replica took it first) and is answered at once; this bounds the wait for
that answer (a busy server may take a while)."""
RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 5.0


@dataclass
class ProcessorStats:
    """Counters of one processor since it started (for logs, health and tests)."""

    batches: int = 0
    """Fetches that returned deliveries (at most ``batch_size`` each)."""
    received: int = 0
    processed: int = 0
    """Events acknowledged after being stored (and forwarded): new ones and duplicates."""
    ingested: int = 0
    duplicates: int = 0
    parked: int = 0
    redelivered: int = 0
    """Events handed back for a later delivery (``nak``)."""
    store_errors: int = 0
    forwarded: int = 0
    forward_errors: int = 0
    last_lag_seconds: float | None = None
    """Age of the oldest event of the last batch when it was fetched."""
    last_pending: int | None = None
    """Events still waiting in the stream after the last batch."""
    held_since: datetime | None = field(default=None)
    """When the current batch started waiting for the store or OpenMeter, if it is."""


class _Batch:
    """The deliveries of one fetch and which of them are settled."""

    def __init__(self, deliveries: Sequence[Delivery]) -> None:
        self.deliveries = list(deliveries)
        self._settled: set[int] = set()

    def unsettled(self) -> list[Delivery]:
        return [d for d in self.deliveries if id(d) not in self._settled]

    async def settle(self, delivery: Delivery, how: Callable[[], Awaitable[None]]) -> None:
        if id(delivery) in self._settled:
            return
        self._settled.add(id(delivery))
        try:
            await how()
        except KgentsError as exc:
            # The stream will deliver it again after the ack wait; the store and the sink
            # recognise it by id.
            logger.warning("settling usage event %s failed: %s", _name(delivery), exc)


class MeteringProcessor:
    """Moves usage events from ``source`` into ``store`` (and ``sink``), exactly once.

    Several processors (one per replica) may share one durable consumer. ``run()`` is the
    background worker; ``drain_once()`` processes one batch, for tests and tools.
    """

    def __init__(
        self,
        *,
        source: UsageSource,
        store: MeteringStore,
        sink: UsageSink | None = None,
        batch_size: int = BATCH_SIZE,
        fetches_per_batch: int = FETCHES_PER_BATCH,
        max_wait_seconds: float = MAX_WAIT_SECONDS,
        retry_base_seconds: float = RETRY_BASE_SECONDS,
        retry_max_seconds: float = RETRY_MAX_SECONDS,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if fetches_per_batch < 1:
            raise ValueError("fetches_per_batch must be at least 1")
        self._source = source
        self._store = store
        self._sink = sink
        self._batch_size = batch_size
        self._fetches_per_batch = fetches_per_batch
        self._max_wait = max_wait_seconds
        self._retry_base = retry_base_seconds
        self._retry_max = retry_max_seconds
        self._clock = clock
        self.stats = ProcessorStats()

    async def run(self) -> None:
        """Process batches until cancelled; failures are logged and retried with backoff.

        The store's meters must be in sync before (``sync_meters``: the app's lifespan does
        it before starting the workers)."""
        delay = self._retry_base
        while True:
            raise_if_cancelled()
            try:
                await self.drain_once()
            except KgentsError as exc:
                logger.warning("metering postponed: %s", exc)
            except Exception:
                logger.exception("metering failed; retrying")
            else:
                delay = self._retry_base
                continue
            await asyncio.sleep(_jittered(delay))
            delay = min(delay * 2, self._retry_max)

    async def drain_once(self) -> int:
        """Fetch one batch (more fetches while a backlog waits) and see it through: stored,
        forwarded and acknowledged, or parked, or handed back for redelivery. Returns how many
        messages the batch had (0 when none arrived within the fetch timeout)."""
        deliveries = await self._source.fetch(batch=self._batch_size, max_wait=self._max_wait)
        if not deliveries:
            return 0
        self._observe(deliveries)
        batch = _Batch(deliveries)
        keep_alive = asyncio.create_task(self._keep_alive(batch), name="metering-keep-alive")
        try:
            await self._fetch_backlog(batch)
            await self._process(batch)
        except BaseException:
            # Stopped or failed mid-batch: hand back what is not settled, so another
            # processor takes it now rather than after the ack wait.
            for delivery in batch.unsettled():
                await batch.settle(delivery, delivery.nak)
            raise
        finally:
            keep_alive.cancel()
            await asyncio.gather(keep_alive, return_exceptions=True)
            self.stats.held_since = None
        return len(batch.deliveries)

    # -- one batch ------------------------------------------------------------------------

    async def _fetch_backlog(self, batch: _Batch) -> None:
        """Add further fetches to ``batch`` while the stream reports more waiting: one
        transaction then stores several fetches. (A failure here hands the whole batch back.)"""
        for _ in range(self._fetches_per_batch - 1):
            if batch.deliveries[-1].pending <= 0:
                return
            more = await self._source.fetch(
                batch=self._batch_size, max_wait=BACKLOG_ANSWER_SECONDS, no_wait=True
            )
            if not more:
                return
            self._observe(more)
            batch.deliveries.extend(more)

    async def _process(self, batch: _Batch) -> None:
        decoded: list[Delivery] = []
        for delivery in batch.deliveries:
            if delivery.event is None:
                await self._park(batch, delivery, delivery.problem or "undecodable event")
            else:
                decoded.append(delivery)
        stored = await self._ingest(batch, decoded)
        accepted = []
        size = self._batch_size
        for first in range(0, len(stored), size):
            accepted += await self._forward(batch, stored[first : first + size])
        for delivery in accepted:
            await batch.settle(delivery, delivery.ack)
        self.stats.processed += len(accepted)
        await self._source.flush()

    async def _ingest(self, batch: _Batch, items: list[Delivery]) -> list[Delivery]:
        """Store the events in one transaction; return the deliveries now safely stored."""
        if not items:
            return []
        events = [_event(d) for d in items]
        delay = self._retry_base
        while True:
            try:
                new = await self._store.ingest(events)
            except Exception as exc:  # the store's errors, and any poison the driver chokes on
                self.stats.store_errors += 1
                if isinstance(exc, InvalidInput) or await self._store_reachable():
                    return await self._ingest_one_by_one(batch, items)
                logger.warning("meter store unavailable (%s); holding %d events", exc, len(items))
                await self._hold(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            self.stats.ingested += new
            self.stats.duplicates += len(items) - new
            return items

    async def _ingest_one_by_one(self, batch: _Batch, items: list[Delivery]) -> list[Delivery]:
        stored = []
        for delivery in items:
            try:
                new = await self._store.ingest([_event(delivery)])
            except InvalidInput as exc:
                await self._park(batch, delivery, f"refused by the meter store: {exc.message}")
            except Exception as exc:
                self.stats.store_errors += 1
                await self._retry_later(batch, delivery, f"storing failed: {_describe(exc)}")
            else:
                self.stats.ingested += new
                self.stats.duplicates += 1 - new
                stored.append(delivery)
        return stored

    async def _forward(self, batch: _Batch, items: list[Delivery]) -> list[Delivery]:
        """Send the stored events to the sink; return the deliveries it accepted (all but the
        ones it refused as invalid, which are parked)."""
        if self._sink is None or not items:
            return items
        try:
            await self._send(batch, items)
        except InvalidInput as exc:
            if len(items) == 1:
                await self._park(batch, items[0], f"not forwarded to OpenMeter: {exc.message}")
                return []
            logger.warning(
                "OpenMeter refused a batch of %d (%s); sending one by one", len(items), exc
            )
        else:
            return items
        accepted = []
        for delivery in items:
            try:
                await self._send(batch, [delivery])
            except InvalidInput as exc:
                await self._park(batch, delivery, f"not forwarded to OpenMeter: {exc.message}")
            else:
                accepted.append(delivery)
        return accepted

    async def _send(self, batch: _Batch, items: list[Delivery]) -> None:
        """Send until the sink accepts (holding the batch while it is unavailable); raises
        ``InvalidInput`` when it refuses the events."""
        if self._sink is None:
            return
        events = [_event(d) for d in items]
        delay = self._retry_base
        while True:
            try:
                await self._sink.send(events)
            except InvalidInput:
                self.stats.forward_errors += 1
                raise
            except Exception as exc:
                self.stats.forward_errors += 1
                logger.warning("OpenMeter unavailable (%s); holding %d events", exc, len(events))
                await self._hold(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            self.stats.forwarded += len(events)
            return

    # -- failures -------------------------------------------------------------------------

    async def _park(self, batch: _Batch, delivery: Delivery, error: str) -> None:
        """Keep the event in the dead-letter table, then terminate it; if even that fails,
        hand it back for a later delivery (never drop it)."""
        try:
            await self._store.park_dead_letter(
                event=delivery.event or delivery.payload,
                error=error,
                attempts=delivery.attempts,
                at=self._clock(),
            )
        except Exception as exc:
            self.stats.store_errors += 1
            logger.error("cannot park usage event %s (%s)", _name(delivery), _describe(exc))
            await self._nak(batch, delivery)
            return
        self.stats.parked += 1
        logger.warning(
            "parked usage event %s after %d deliveries: %s",
            _name(delivery),
            delivery.attempts,
            error,
        )
        await batch.settle(delivery, delivery.term)

    async def _retry_later(self, batch: _Batch, delivery: Delivery, error: str) -> None:
        """Redeliver with backoff, or park on the last delivery but one."""
        limit = self._source.max_deliver
        if limit > 0 and delivery.attempts >= limit - 1:
            await self._park(batch, delivery, f"{error} (after {delivery.attempts} deliveries)")
        else:
            logger.warning("usage event %s: %s; redelivering later", _name(delivery), error)
            await self._nak(batch, delivery)

    async def _nak(self, batch: _Batch, delivery: Delivery) -> None:
        delay = min(self._retry_max, self._retry_base * 2.0 ** max(delivery.attempts - 1, 0))
        self.stats.redelivered += 1

        async def nak() -> None:
            await delivery.nak(delay=delay)

        await batch.settle(delivery, nak)

    async def _store_reachable(self) -> bool:
        """Whether the store answers a cheap read: tells "this event is bad" from "the
        database is down" after a failed write."""
        try:
            await self._store.dead_letter_count()
        except Exception:
            return False
        return True

    async def _hold(self, delay: float) -> None:
        """Wait ``delay`` (with jitter) before retrying a held batch (``_keep_alive`` stops
        its messages from being redelivered meanwhile)."""
        raise_if_cancelled()
        if self.stats.held_since is None:
            self.stats.held_since = self._clock()
        await asyncio.sleep(_jittered(delay))

    async def _keep_alive(self, batch: _Batch) -> None:
        """While a batch is being processed, restart the ack wait of its unsettled messages
        (``in_progress``) every third of it: a slow store, a slow OpenMeter or an outage of
        either does not make the stream redeliver them, nor use up their deliveries."""
        interval = max(self._source.ack_wait_seconds / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            for delivery in batch.unsettled():
                try:
                    await delivery.in_progress()
                except KgentsError:
                    break  # the stream is down: it redelivers after the ack wait, harmlessly

    def _observe(self, deliveries: Sequence[Delivery]) -> None:
        self.stats.batches += 1
        self.stats.received += len(deliveries)
        oldest = min(d.published_at for d in deliveries)
        self.stats.last_lag_seconds = max((self._clock() - oldest).total_seconds(), 0.0)
        self.stats.last_pending = deliveries[-1].pending


def _event(delivery: Delivery) -> UsageEvent:
    if delivery.event is None:  # only decoded deliveries get here
        raise ValueError("delivery without an event")
    return delivery.event


def _name(delivery: Delivery) -> str:
    event = delivery.event
    return f"{event.source}/{event.id}" if event is not None else "(undecodable)"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _jittered(delay: float) -> float:
    """``delay`` scaled by a random factor in [0.5, 1): retries of many replicas spread out."""
    return delay * (0.5 + random.random() / 2)  # noqa: S311 (timing jitter, not security)
