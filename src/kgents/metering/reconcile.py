"""Reconciliation: the tokens of stored turns against the meter totals, tenant by tenant.

Turns are the source of truth (each finished turn billed exactly once through its
``llm.tokens`` event, whose id derives from the turn id); the meters are what customers are
billed from. After the outbox and the processor have drained, the two must agree exactly.

``check_metering`` adds what explains a difference that is not an error: usage events still in
the outbox (not yet relayed to JetStream) and events parked as dead letters.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

TOKENS_IN_METER = "llm_tokens_in"
TOKENS_OUT_METER = "llm_tokens_out"


class TurnTotals(Protocol):
    async def tokens_by_tenant(self) -> dict[str, tuple[int, int]]:
        """(tokens in, tokens out) of every finished turn, per tenant."""
        ...


class MeterTotals(Protocol):
    async def totals_by_subject(self, meter: str) -> dict[str, float]: ...


class OutboxBacklog(Protocol):
    async def backlog(self) -> int:
        """Usage events stored but not yet relayed to the event stream."""
        ...


class ParkedEvents(Protocol):
    async def dead_letter_count(self) -> int: ...


@dataclass(frozen=True, slots=True)
class TenantReconciliation:
    tenant_id: str
    turns_in: int
    turns_out: int
    meter_in: float
    meter_out: float

    @property
    def matches(self) -> bool:
        return self.turns_in == self.meter_in and self.turns_out == self.meter_out

    @property
    def difference_in(self) -> float:
        """Metered minus stored tokens in: negative when turns were not (yet) billed."""
        return self.meter_in - self.turns_in

    @property
    def difference_out(self) -> float:
        return self.meter_out - self.turns_out


@dataclass(frozen=True, slots=True)
class MeteringCheck:
    """A reconciliation with what may explain its differences."""

    tenants: list[TenantReconciliation]
    outbox_backlog: int
    dead_letters: int

    @property
    def differences(self) -> list[TenantReconciliation]:
        return [tenant for tenant in self.tenants if not tenant.matches]


CHECK_STEPS = 5
"""How many times ``check_metering`` reports progress (for a progress bar's total)."""


def _no_progress(step: str) -> None:
    pass


async def reconcile(
    *,
    turns: TurnTotals,
    meters: MeterTotals,
    on_step: Callable[[str], None] = _no_progress,
) -> list[TenantReconciliation]:
    """One row per tenant that has turns or metered tokens, sorted by tenant id.

    ``on_step`` is called with what was just done after each of its three reads."""
    by_turns = await turns.tokens_by_tenant()
    on_step("tokens of stored turns")
    metered_in: Mapping[str, float] = await meters.totals_by_subject(TOKENS_IN_METER)
    on_step(f"meter {TOKENS_IN_METER}")
    metered_out: Mapping[str, float] = await meters.totals_by_subject(TOKENS_OUT_METER)
    on_step(f"meter {TOKENS_OUT_METER}")
    tenants = sorted(set(by_turns) | set(metered_in) | set(metered_out))
    return [
        TenantReconciliation(
            tenant_id=tenant,
            turns_in=by_turns.get(tenant, (0, 0))[0],
            turns_out=by_turns.get(tenant, (0, 0))[1],
            meter_in=metered_in.get(tenant, 0.0),
            meter_out=metered_out.get(tenant, 0.0),
        )
        for tenant in tenants
    ]


async def check_metering(
    *,
    turns: TurnTotals,
    meters: MeterTotals,
    outbox: OutboxBacklog,
    parked: ParkedEvents,
    on_step: Callable[[str], None] = _no_progress,
) -> MeteringCheck:
    """``reconcile``, with the outbox backlog and the dead letters; ``on_step`` is called
    ``CHECK_STEPS`` times in all."""
    tenants = await reconcile(turns=turns, meters=meters, on_step=on_step)
    backlog = await outbox.backlog()
    on_step("outbox backlog")
    dead_letters = await parked.dead_letter_count()
    on_step("dead letters")
    return MeteringCheck(tenants=tenants, outbox_backlog=backlog, dead_letters=dead_letters)
