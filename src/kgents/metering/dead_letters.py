"""Replaying dead letters: events the processor parked, ingested again by an operator.

The processor parks an event it cannot store (or that OpenMeter refused) in the meter store's
dead-letter table. Once the cause is fixed, ``replay_dead_letters`` ingests each one again and
removes it in the same transaction (``MeterStore.replay_dead_letter``). The meter store's
unique ``(source, id)`` makes this idempotent: an event already counted, or replayed twice,
counts once.

With a ``sink`` (OpenMeter configured), each event is first forwarded, so OpenMeter's copy
ends up equal to ours as after a normal delivery; OpenMeter's own dedupe by ``(source, id)``
makes a resend harmless. An event OpenMeter refuses stays parked (with its answer); when
OpenMeter is unavailable the replay stops there and that event and the rest stay parked.
"""

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Protocol

from kgents.errors import Conflict, InvalidInput, NotFound
from kgents.metering.ports import ReplayOutcome, UsageSink
from kgents.records import UsageEvent


class DeadLetterStore(Protocol):
    """The part of ``MeterStore`` replaying uses."""

    async def dead_letter_ids(self, *, among: Sequence[int] | None = None) -> list[int]: ...

    async def dead_letter_event(self, dead_letter_id: int) -> UsageEvent | None: ...

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
    sink: UsageSink | None = None,
    on_replayed: Callable[[ReplayOutcome], None] | None = None,
) -> list[ReplayOutcome]:
    """Replay the dead letters ``ids`` one by one (each in its own transaction, forwarded to
    ``sink`` first), calling ``on_replayed`` after each; an event still refused stays parked.
    Raises what ``sink`` raises when it is unavailable (the letters not replayed stay parked)."""
    outcomes = []
    for dead_letter_id in ids:
        outcome = await _replay_one(store, dead_letter_id, sink)
        outcomes.append(outcome)
        if on_replayed is not None:
            on_replayed(outcome)
    return outcomes


async def _replay_one(
    store: DeadLetterStore, dead_letter_id: int, sink: UsageSink | None
) -> ReplayOutcome:
    if sink is not None:
        try:
            event = await store.dead_letter_event(dead_letter_id)
        except InvalidInput as exc:  # not replayable: the store keeps it parked either way
            return ReplayOutcome(dead_letter_id, "still_parked", exc.message)
        if event is None:
            return ReplayOutcome(dead_letter_id, "gone")
        try:
            await sink.send([event])
        except InvalidInput as exc:
            return ReplayOutcome(dead_letter_id, "still_parked", f"OpenMeter: {exc.message}")
    return await store.replay_dead_letter(dead_letter_id)
