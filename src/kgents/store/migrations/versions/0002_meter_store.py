"""meter store: ingested events, minute and hour rollups, distinct values, definitions, dead letters

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 14:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "meter_events",
        sa.Column("source", sa.String(length=256), nullable=False),
        sa.Column("id", sa.String(length=256), nullable=False),
        sa.Column("type", sa.String(length=128), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "id"),
    )
    for table in ("meter_rollups", "meter_rollups_hourly"):
        op.create_table(
            table,
            sa.Column("meter", sa.String(length=64), nullable=False),
            sa.Column("subject", sa.String(length=256), nullable=False),
            sa.Column("window_minute", sa.BigInteger(), nullable=False),
            sa.Column("group_key", sa.Text(), nullable=False),
            sa.Column("event_count", sa.BigInteger(), nullable=False),
            sa.Column("value_count", sa.BigInteger(), nullable=False),
            sa.Column("value_sum", sa.Double(), nullable=False),
            sa.Column("value_min", sa.Double(), nullable=True),
            sa.Column("value_max", sa.Double(), nullable=True),
            sa.Column("latest_us", sa.BigInteger(), nullable=True),
            sa.Column("latest_value", sa.Double(), nullable=True),
            sa.PrimaryKeyConstraint("meter", "subject", "window_minute", "group_key"),
            sqlite_with_rowid=False,
        )
        op.create_index(f"ix_{table}_meter_minute", table, ["meter", "window_minute"], unique=False)
    op.create_table(
        "meter_rollup_values",
        sa.Column("meter", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("window_minute", sa.BigInteger(), nullable=False),
        sa.Column("group_key", sa.Text(), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("meter", "subject", "window_minute", "group_key", "value"),
        sqlite_with_rowid=False,
    )
    op.create_index(
        "ix_meter_rollup_values_meter_minute",
        "meter_rollup_values",
        ["meter", "window_minute"],
        unique=False,
    )
    op.create_table(
        "meter_definitions",
        sa.Column("slug", sa.String(length=64), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("slug"),
    )
    op.create_table(
        "meter_dead_letters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_meter_dead_letters_parked_at"), "meter_dead_letters", ["parked_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_meter_dead_letters_parked_at"), table_name="meter_dead_letters")
    op.drop_table("meter_dead_letters")
    op.drop_table("meter_definitions")
    op.drop_index("ix_meter_rollup_values_meter_minute", table_name="meter_rollup_values")
    op.drop_table("meter_rollup_values")
    for table in ("meter_rollups_hourly", "meter_rollups"):
        op.drop_index(f"ix_{table}_meter_minute", table_name=table)
        op.drop_table(table)
    op.drop_table("meter_events")
