"""What metering needs from its adapters: the meter store (exactly-once ingest, rollups,
queries), and the metering processor's source of deliveries and sink (OpenMeter)."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from kgents.metering.meters import Meter, WindowSize
from kgents.metering.query import QueryRow
from kgents.records import UsageEvent


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event the processor gave up on, kept for an operator to inspect and replay."""

    id: int
    event: dict[str, Any]
    error: str
    attempts: int
    parked_at: datetime


ReplayStatus = Literal["counted", "duplicate", "still_parked", "gone"]


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What replaying one dead letter did.

    ``counted``: ingested and removed from the dead letters. ``duplicate``: the meter store
    already had the event (it counts once), removed. ``still_parked``: still refused, kept,
    ``error`` says why. ``gone``: no longer parked (replayed meanwhile by someone else).
    """

    dead_letter_id: int
    status: ReplayStatus
    error: str | None = None


class MeterStore(Protocol):
    @property
    def meters(self) -> Sequence[Meter]: ...

    def meter(self, slug: str) -> Meter: ...

    async def sync_meters(self, *, at: datetime | None = None) -> list[str]: ...

    async def ingest(self, events: Sequence[UsageEvent], *, at: datetime | None = None) -> int: ...

    async def query(
        self,
        meter: Meter | str,
        *,
        subjects: Sequence[str] | None = None,
        group_by: Sequence[str] = (),
        from_: datetime | None = None,
        to: datetime | None = None,
        window_size: WindowSize | str | None = None,
        window_time_zone: str = "UTC",
    ) -> list[QueryRow]: ...

    async def park_dead_letter(
        self, *, event: UsageEvent | Mapping[str, Any], error: str, attempts: int, at: datetime
    ) -> int: ...

    async def dead_letters(self, *, limit: int = 100, offset: int = 0) -> list[DeadLetter]: ...

    async def dead_letter_count(self) -> int: ...

    async def dead_letter_ids(self, *, among: Sequence[int] | None = None) -> list[int]: ...

    async def dead_letter_event(self, dead_letter_id: int) -> UsageEvent | None: ...

    async def replay_dead_letter(
        self, dead_letter_id: int, *, at: datetime | None = None
    ) -> ReplayOutcome: ...

    async def stale_meters(self) -> list[str]: ...

    async def event_count(self) -> int: ...

    async def totals_by_subject(self, meter: Meter | str) -> dict[str, float]: ...


# -- the metering processor's ports --------------------------------------------------------


class Delivery(Protocol):
    """One usage event as delivered by the event stream, and how to settle it."""

    @property
    def event(self) -> UsageEvent | None:
        """The event, or ``None`` when the message could not be decoded."""
        ...

    @property
    def problem(self) -> str | None:
        """Why there is no event."""
        ...

    @property
    def payload(self) -> Mapping[str, Any]:
        """What was received (for a dead letter)."""
        ...

    @property
    def attempts(self) -> int:
        """How many times it has been delivered, this time included."""
        ...

    @property
    def published_at(self) -> datetime: ...

    @property
    def pending(self) -> int:
        """Events still waiting after this one."""
        ...

    async def ack(self) -> None: ...

    async def nak(self, *, delay: float | None = None) -> None: ...

    async def term(self) -> None: ...

    async def in_progress(self) -> None: ...


class UsageSource(Protocol):
    """The durable consumer the processor reads (``streaming.usage_consumer``)."""

    @property
    def max_deliver(self) -> int: ...

    @property
    def ack_wait_seconds(self) -> float: ...

    async def fetch(
        self, *, batch: int, max_wait: float, no_wait: bool = False
    ) -> Sequence[Delivery]:
        """Up to ``batch`` deliveries: those pending now, else what arrives within
        ``max_wait`` seconds; none when nothing came. With ``no_wait``, only those pending
        now (answered at once, however busy the server; ``max_wait`` only bounds the wait
        for that answer)."""
        ...

    async def flush(self) -> None:
        """Make sure the acks sent so far reached the stream."""
        ...


class MeteringStore(Protocol):
    """The part of ``MeterStore`` the processor uses."""

    async def ingest(self, events: Sequence[UsageEvent], *, at: datetime | None = None) -> int: ...

    async def park_dead_letter(
        self, *, event: UsageEvent | Mapping[str, Any], error: str, attempts: int, at: datetime
    ) -> int: ...

    async def dead_letter_count(self) -> int: ...


class UsageSink(Protocol):
    """Where events are forwarded (``sinks.openmeter``).

    ``send`` returns once the whole batch was accepted; raises ``InvalidInput`` when the sink
    refuses it as invalid, any other error when it is unavailable (then nothing is known to be
    accepted and the batch is sent again later: the sink must dedupe by event id).
    """

    async def send(self, events: Sequence[UsageEvent]) -> None: ...
