"""What metering needs from storage: the meter store (exactly-once ingest, rollups, queries)."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

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


def cloudevent(event: UsageEvent) -> dict[str, Any]:
    """``event`` as CloudEvents 1.0 JSON (OpenMeter's ``Event``)."""
    return {
        "specversion": event.specversion,
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "subject": event.subject,
        "time": event.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": event.data,
    }


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

    async def event_count(self) -> int: ...

    async def totals_by_subject(self, meter: Meter | str) -> dict[str, float]: ...
