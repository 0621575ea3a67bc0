"""tokens per tenant and month, the token quota's count (filled from the finished turns)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 15:00:00+00:00
"""

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenant_month_tokens",
        sa.Column("tenant_id", sa.String(length=64), nullable=False),
        sa.Column("month_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "month_start"),
    )
    counts = sa.table(
        "tenant_month_tokens",
        sa.column("tenant_id", sa.String()),
        sa.column("month_start", sa.DateTime(timezone=True)),
        sa.column("tokens", sa.BigInteger()),
    )
    turns = sa.table(
        "turns",
        sa.column("tenant_id", sa.String()),
        sa.column("status", sa.String()),
        sa.column("started_at", sa.DateTime(timezone=True)),
        sa.column("tokens_in", sa.Integer()),
        sa.column("tokens_out", sa.Integer()),
    )
    finished = sa.select(
        turns.c.tenant_id, turns.c.started_at, turns.c.tokens_in + turns.c.tokens_out
    ).where(turns.c.status != "running")
    totals: Counter[tuple[str, datetime]] = Counter()
    for tenant_id, started_at, tokens in op.get_bind().execute(finished):
        totals[tenant_id, _month_start(started_at)] += int(tokens or 0)
    op.bulk_insert(
        counts,
        [
            {"tenant_id": tenant_id, "month_start": month_start, "tokens": tokens}
            for (tenant_id, month_start), tokens in totals.items()
        ],
    )


def downgrade() -> None:
    op.drop_table("tenant_month_tokens")


def _month_start(started_at: datetime) -> datetime:
    """The UTC calendar month of a stored time (SQLite returns it naive, in UTC)."""
    utc = started_at.replace(tzinfo=UTC) if started_at.tzinfo is None else started_at
    return utc.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
