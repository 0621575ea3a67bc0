"""The token quota's count: tokens per tenant and calendar month (UTC), added to in the
transaction that finishes a turn and read in the one that starts a turn (one row, however
many turns the tenant ran)."""

from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from kgents.store.limits_schema import TenantMonthTokensRow
from kgents.tenancy.quota import month_bounds


def add_month_tokens_statement(dialect: str) -> Any:
    """Add ``:tokens`` to the row of tenant ``:tenant`` and month ``:month_start`` (an upsert;
    the month is the one a turn started in: ``month_bounds(started_at)[0]``)."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(TenantMonthTokensRow).values(
        tenant_id=bindparam("tenant"),
        month_start=bindparam("month_start"),
        tokens=bindparam("tokens"),
    )
    return statement.on_conflict_do_update(
        index_elements=["tenant_id", "month_start"],
        set_={"tokens": TenantMonthTokensRow.tokens + statement.excluded.tokens},
    )


def require_month_start(month_start: datetime) -> None:
    """``ValueError`` unless ``month_start`` begins a calendar month (UTC): a month's row is
    keyed by that moment, so any other one would find no row and read as no tokens."""
    if month_bounds(month_start)[0] != month_start:
        raise ValueError(f"{month_start.isoformat()} does not begin a calendar month (UTC)")


def month_tokens_query(tenant_id: str, *, month_start: datetime) -> Select[int]:
    """The tokens of the tenant's finished turns started in the month from ``month_start``
    (no row: none). ``month_start`` must begin a month (``month_bounds``), not any moment."""
    require_month_start(month_start)
    return month_tokens_statement().params(tenant=tenant_id, month_start=month_start)


def month_tokens_statement() -> Select[int]:
    """``month_tokens_query`` with parameters ``:tenant`` and ``:month_start``."""
    return select(TenantMonthTokensRow.tokens).where(
        TenantMonthTokensRow.tenant_id == bindparam("tenant"),
        TenantMonthTokensRow.month_start == bindparam("month_start"),
    )
