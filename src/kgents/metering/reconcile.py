"""Reconciliation: the tokens of stored turns against the meter totals, tenant by tenant.

Turns are the source of truth (each finished turn billed exactly once through its
``llm.tokens`` event, whose id derives from the turn id); the meters are what customers are
billed from. After the outbox and the processor have drained, the two must agree exactly.
"""

from collections.abc import Mapping
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


async def reconcile(*, turns: TurnTotals, meters: MeterTotals) -> list[TenantReconciliation]:
    """One row per tenant that has turns or metered tokens, sorted by tenant id."""
    by_turns = await turns.tokens_by_tenant()
    metered_in: Mapping[str, float] = await meters.totals_by_subject(TOKENS_IN_METER)
    metered_out: Mapping[str, float] = await meters.totals_by_subject(TOKENS_OUT_METER)
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
