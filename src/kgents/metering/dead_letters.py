"""Replaying dead letters: events the processor parked, ingested again by an operator.

The processor parks an event it cannot store (or that OpenMeter refused) in the meter store's
dead-letter table. Once the cause is fixed, ``replay_dead_letters`` ingests each one again and
removes it in the same transaction (``MeterStore.replay_dead_letter``). The meter store's
unique ``(source, id)`` makes this idempotent: an event already counted, or replayed twice,
counts once. Replay writes the meter store only; it does not forward to OpenMeter.
"""

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from kgents.errors import Conflict, NotFound
from kgents.metering.ports import ReplayOutcome


class DeadLetterStore(Protocol):
    """The part of ``MeterStore`` replaying uses."""

    async def dead_letter_ids(self, *, among: Sequence[int] | None = None) -> list[int]: ...

    async def replay_dead_letter(
        self, dead_letter_id: int, *, at: datetime | None = None
    ) -> ReplayOutcome: ...

    async def stale_meters(self) -> list[str]: ...


async def dead_letters_to_replay(*, store: DeadLetterStore, ids: Sequence[int] | None) -> list[int]:
    """The dead letters a replay would take: ``ids`` (all parked ones when ``None``), in
    order. Raises ``NotFound`` naming the ids that are not parked, and ``Conflict`` when the
    configured meters are not those the store's rollups were built with (replaying would
    leave the other meters without the events): nothing is replayed then."""
    if ids is None:
        chosen = await store.dead_letter_ids()
    else:
        chosen = list(dict.fromkeys(ids))
        parked = set(await store.dead_letter_ids(among=chosen))
        unknown = [str(dead_letter_id) for dead_letter_id in chosen if dead_letter_id not in parked]
        if unknown:
            raise NotFound(f"no dead letter with id {', '.join(unknown)}")
    stale = await store.stale_meters() if chosen else []
    if stale:
        raise Conflict(
            f"the configured meters differ from the meter store's ({', '.join(stale)}): "
            "replay with the meters file the server uses, after it has started with it"
        )
    return chosen


async def replay_dead_letters(
    *,
    store: DeadLetterStore,
    ids: Sequence[int],
    on_replayed: Callable[[ReplayOutcome], None] | None = None,
) -> list[ReplayOutcome]:
    """Replay the dead letters ``ids`` one by one (each in its own transaction), calling
    ``on_replayed`` after each; an event still refused stays parked."""
    outcomes = []
    for dead_letter_id in ids:
        outcome = await store.replay_dead_letter(dead_letter_id)
        outcomes.append(outcome)
        if on_replayed is not None:
            on_replayed(outcome)
    return outcomes
