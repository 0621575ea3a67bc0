"""Prometheus metrics of one application, in a registry of its own (tests build many apps).

Series (``GET /metrics``, admin token); the labels of each are in brackets:

- ``kgents_http_requests_total`` [method, route, status]: requests answered; ``route`` is the
  route template (``/v1/kgent/sessions/{session_id}``), ``unmatched`` for unknown paths.
- ``kgents_http_request_duration_seconds`` [method, route]: time to answer (histogram); SSE
  responses are left out, they last as long as the client follows.
- ``kgents_sse_streams_active``: Server-Sent Events responses open now.
- ``kgents_time_to_first_chunk_seconds``: from the ack of a turn's ``user_message`` to the ack
  of its first chunk (histogram).
- ``kgents_chunks_published_total``: reply chunk events published (each one or more tokens).
- ``kgents_turns_finished_total`` [outcome]: ``complete`` or the error code (``cancelled``…).
- ``kgents_jetstream_publish_seconds`` [operation]: time the generation waited on JetStream
  (histogram), each publish until its ack: ``start`` (a turn's ``user_message``), ``chunk``,
  ``end`` (``complete`` or ``error``).
- ``kgents_outbox_backlog``: usage events not yet relayed to JetStream.
- ``kgents_nats_connected``: 1 while NATS is connected, else 0.
- ``kgents_turns_running``: generation tasks running in this process.
- ``kgents_metering_consumer_lag_messages``: usage events waiting for the metering processor
  after its last batch; ``kgents_metering_consumer_lag_seconds``: age of the oldest event of
  that batch.
- ``kgents_metering_dead_letters``: usage events parked as dead letters.
- ``kgents_follow_feeds``, ``kgents_followers_open``, ``kgents_follow_private_readers``: the
  sessions followed in this process (one shared JetStream consumer each), their open
  followers, and the followers catching up on a consumer of their own.
- ``kgents_asyncio_tasks``: tasks alive on this process's event loop.
- ``kgents_openmeter_forward_errors_total``: failed forwards of batches to OpenMeter.

Scrape-time values are read by ``refresh()`` just before rendering; a source that has no value
(not running, or failing) leaves its series without a sample rather than reporting a false 0.
"""

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

Number = int | float
Probe = Callable[[], Awaitable[Number | None] | Number | None]
PROBE_TIMEOUT_SECONDS = 2.0
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FIRST_CHUNK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class MeteringStats(Protocol):
    """What the metering processor reports about itself (its ``ProcessorStats``)."""

    @property
    def last_pending(self) -> int | None: ...

    @property
    def last_lag_seconds(self) -> float | None: ...

    @property
    def forward_errors(self) -> int: ...


class FollowStats(Protocol):
    """What the session fan-out reports about itself (its ``SessionHub``)."""

    @property
    def feeds(self) -> int: ...

    @property
    def followers(self) -> int: ...

    @property
    def private_readers(self) -> int: ...


@dataclass(slots=True)
class _Probe:
    name: str
    documentation: str
    kind: Literal["gauge", "counter"]
    read: Probe
    value: float | None = None


class ScrapeTimeCollector(Collector):
    """Series whose values are read from the running platform when Prometheus scrapes."""

    def __init__(self) -> None:
        self._probes: dict[str, _Probe] = {}

    def add(
        self,
        name: str,
        documentation: str,
        read: Probe,
        *,
        kind: Literal["gauge", "counter"] = "gauge",
    ) -> None:
        self._probes[name] = _Probe(name, documentation, kind, read)

    async def refresh(self) -> None:
        """Read every source now, concurrently, each within ``PROBE_TIMEOUT_SECONDS``."""
        await asyncio.gather(*(self._read(probe) for probe in self._probes.values()))

    async def _read(self, probe: _Probe) -> None:
        try:
            value = probe.read()
            if inspect.isawaitable(value):
                async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                    value = await value
        except Exception:  # a failing source must not break the scrape of the others
            logger.warning("metrics source %s failed", probe.name, exc_info=True)
            value = None
        probe.value = None if value is None else float(value)

    def collect(self) -> Iterable[Metric]:
        for probe in self._probes.values():
            family: Metric
            if probe.kind == "counter":
                family = CounterMetricFamily(probe.name, probe.documentation)
            else:
                family = GaugeMetricFamily(probe.name, probe.documentation)
            if probe.value is not None:
                family.add_metric([], probe.value)
            yield family

    def describe(self) -> Iterator[Metric]:
        for probe in self._probes.values():
            kind = CounterMetricFamily if probe.kind == "counter" else GaugeMetricFamily
            yield kind(probe.name, probe.documentation)


class Metrics:
    """Every metric of one application. Build one per app; render it with ``exposition()``."""

    # Every name here is a classic Prometheus name, so the body is the 0.0.4 text format that
    # every Prometheus version reads.
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        registry = self.registry = CollectorRegistry()
        self.http_requests = Counter(
            "kgents_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "kgents_http_request_duration_seconds",
            "Time to answer an HTTP request (SSE responses excluded).",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self.sse_streams = Gauge(
            "kgents_sse_streams_active", "Server-Sent Events responses open.", registry=registry
        )
        self.time_to_first_chunk = Histogram(
            "kgents_time_to_first_chunk_seconds",
            "From the ack of a turn's user_message to the ack of its first chunk.",
            buckets=FIRST_CHUNK_BUCKETS,
            registry=registry,
        )
        self.chunks_published = Counter(
            "kgents_chunks_published", "Reply chunks published to JetStream.", registry=registry
        )
        self.turns_finished = Counter(
            "kgents_turns_finished",
            "Turns ended, by outcome (complete, or the error code such as cancelled).",
            ["outcome"],
            registry=registry,
        )
        self.publish_seconds = Histogram(
            "kgents_jetstream_publish_seconds",
            "Time the generation waited on JetStream, by operation (start, chunk, end).",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.scraped = ScrapeTimeCollector()
        registry.register(self.scraped)
        # Declared from the start; without a processor to read (``watch_metering``) they have
        # no sample.
        self._metering: Callable[[], MeteringStats | None] = lambda: None
        self.scraped.add(
            "kgents_metering_consumer_lag_messages",
            "Usage events waiting for the metering processor after its last batch.",
            lambda: self._metering_field("last_pending"),
        )
        self.scraped.add(
            "kgents_metering_consumer_lag_seconds",
            "Age of the oldest usage event of the metering processor's last batch.",
            lambda: self._metering_field("last_lag_seconds"),
        )
        self.scraped.add(
            "kgents_openmeter_forward_errors",
            "Batches of usage events that failed to forward to OpenMeter.",
            lambda: self._metering_field("forward_errors"),
            kind="counter",
        )

    def watch(
        self,
        *,
        outbox_backlog: Probe,
        nats_connected: Callable[[], bool],
        turns_running: Probe,
        dead_letters: Probe,
        follows: FollowStats,
    ) -> None:
        """Attach the running platform's scrape-time sources (called by the app's lifespan)."""
        add = self.scraped.add
        add("kgents_outbox_backlog", "Usage events in the outbox not yet relayed.", outbox_backlog)
        add(
            "kgents_nats_connected",
            "1 while the NATS connection is up, 0 while it is down.",
            lambda: 1 if nats_connected() else 0,
        )
        add("kgents_turns_running", "Generation tasks running in this process.", turns_running)
        add("kgents_metering_dead_letters", "Usage events parked as dead letters.", dead_letters)
        add(
            "kgents_follow_feeds",
            "Sessions followed (one shared consumer each).",
            lambda: follows.feeds,
        )
        add("kgents_followers_open", "Open followers of sessions.", lambda: follows.followers)
        add(
            "kgents_follow_private_readers",
            "Followers catching up on a consumer of their own.",
            lambda: follows.private_readers,
        )
        add(
            "kgents_asyncio_tasks",
            "Tasks alive on the event loop.",
            lambda: len(asyncio.all_tasks()),
        )

    def watch_metering(self, stats: Callable[[], MeteringStats | None]) -> None:
        """Read the metering processor's lag and OpenMeter forward errors from ``stats``."""
        self._metering = stats

    def _metering_field(self, name: str) -> Number | None:
        stats = self._metering()
        value = getattr(stats, name, None) if stats is not None else None
        return value if isinstance(value, int | float) else None

    async def exposition(self) -> bytes:
        """The text format of every series, with scrape-time values read now."""
        await self.scraped.refresh()
        return generate_latest(self.registry)
