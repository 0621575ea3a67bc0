"""Tables of the meter store. Migration ``0002_meter_store`` creates exactly these.

- ``meter_events``: every ingested usage event, keyed by ``(source, id)`` forever; the key is
  written in the same transaction as the rollups it feeds, so an event counts exactly once.
- ``meter_rollups``: mergeable aggregate state per meter, subject, group and UTC minute
  (``window_minute`` = whole minutes since 1970-01-01T00:00Z, integer so windows of any size
  and time zone are integer arithmetic in SQL on both backends).
- ``meter_rollups_hourly``: the same per UTC hour, written in the same transaction.
- ``meter_rollup_values``: the distinct values of UNIQUE_COUNT meters per minute.
- ``meter_definitions``: the definition each meter's rollups were built with, so a changed or
  new meter is rebuilt from ``meter_events``.
- ``meter_dead_letters``: events the processor parked after giving up on them.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Double, Index, Integer, String, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from kgents.store.schema import Base


class MeterEventRow(Base):
    __tablename__ = "meter_events"

    source: Mapped[str] = mapped_column(String(256), primary_key=True)
    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    type: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str] = mapped_column(String(256))
    time: Mapped[datetime]
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    ingested_at: Mapped[datetime]


class _RollupColumns:
    """Mergeable aggregate state of one meter, subject, group and window."""

    meter: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(256), primary_key=True)
    window_minute: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    group_key: Mapped[str] = mapped_column(Text, primary_key=True)
    event_count: Mapped[int] = mapped_column(BigInteger)
    value_count: Mapped[int] = mapped_column(BigInteger)
    value_sum: Mapped[float] = mapped_column(Double)
    value_min: Mapped[float | None] = mapped_column(Double)
    value_max: Mapped[float | None] = mapped_column(Double)
    latest_us: Mapped[int | None] = mapped_column(BigInteger)
    latest_value: Mapped[float | None] = mapped_column(Double)


class MeterRollupRow(_RollupColumns, Base):
    __tablename__ = "meter_rollups"
    __table_args__ = (
        Index("ix_meter_rollups_meter_minute", "meter", "window_minute"),
        # Clustered on the key on SQLite: an upsert touches one B-tree instead of two.
        {"sqlite_with_rowid": False},
    )


class MeterHourlyRollupRow(_RollupColumns, Base):
    """The same state per UTC hour (``window_minute`` is the hour's first minute): windows of
    an hour or more in zones of whole-hour offsets read these, 60 times fewer rows at most."""

    __tablename__ = "meter_rollups_hourly"
    __table_args__ = (
        Index("ix_meter_rollups_hourly_meter_minute", "meter", "window_minute"),
        {"sqlite_with_rowid": False},
    )


class MeterRollupValueRow(Base):
    __tablename__ = "meter_rollup_values"
    __table_args__ = (
        Index("ix_meter_rollup_values_meter_minute", "meter", "window_minute"),
        {"sqlite_with_rowid": False},
    )

    meter: Mapped[str] = mapped_column(String(64), primary_key=True)
    subject: Mapped[str] = mapped_column(String(256), primary_key=True)
    window_minute: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    group_key: Mapped[str] = mapped_column(Text, primary_key=True)
    value: Mapped[str] = mapped_column(Text, primary_key=True)


class MeterDefinitionRow(Base):
    __tablename__ = "meter_definitions"

    slug: Mapped[str] = mapped_column(String(64), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64))
    synced_at: Mapped[datetime]


class MeterDeadLetterRow(Base):
    __tablename__ = "meter_dead_letters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event: Mapped[dict[str, Any]] = mapped_column(JSON)
    error: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    parked_at: Mapped[datetime] = mapped_column(index=True)


# Core tables for the SQL built in meter_repo, meter_ingest_sql and meter_query_sql.
EVENTS: Table = MeterEventRow.__table__  # type: ignore[assignment]
ROLLUPS: Table = MeterRollupRow.__table__  # type: ignore[assignment]
HOURLY: Table = MeterHourlyRollupRow.__table__  # type: ignore[assignment]
VALUES: Table = MeterRollupValueRow.__table__  # type: ignore[assignment]
DEFINITIONS: Table = MeterDefinitionRow.__table__  # type: ignore[assignment]
DEAD_LETTERS: Table = MeterDeadLetterRow.__table__  # type: ignore[assignment]
