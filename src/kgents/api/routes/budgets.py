"""``GET /v1/kgent/budgets``: the budgets the calling tenant's plan allows (API key)."""

from typing import Any

from fastapi import APIRouter

from kgents.api.deps import SessionsDep
from kgents.api.schemas import BudgetsPublic, ErrorBody
from kgents.sessions.persona import allowed_budgets, default_budget

router = APIRouter(prefix="/v1/kgent/budgets", tags=["sessions"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, invalid, revoked or expired API key"},
    403: {"model": ErrorBody, "description": "Tenant suspended, or no 'sessions' scope"},
}


@router.get("", responses=_ERRORS)
async def list_budgets(principal: SessionsDep) -> BudgetsPublic:
    """What ``budget`` a message may name on this plan, and what a message naming none uses."""
    ceiling = principal.plan.max_budget
    return BudgetsPublic(
        plan=principal.tenant.plan,
        budgets=list(allowed_budgets(ceiling)),
        default=default_budget(ceiling),
    )
