"""A tenant's usage read as one snapshot: every meter and the tokens of its turns together.

``GET /v1/usage`` shows each meter and the token quota side by side. Read one statement at a
time, an event or a turn committed between two reads would be in some of the numbers and not in
others (``llm_tokens_in`` with a turn, ``llm_tokens_out`` without it). Here every read runs in
one transaction that sees the database at one moment: REPEATABLE READ (and read only) on
PostgreSQL, whose snapshot is taken at the first statement; on SQLite one read transaction,
which in WAL mode sees the database as it was at its first read until it ends.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from kgents.errors import Unavailable
from kgents.metering.meters import Meter, WindowSize
from kgents.metering.query import DEFAULT_QUERY_LIMITS, QueryLimits, QueryRow, build_query
from kgents.store.meter_query_sql import QueryRun
from kgents.store.quota_sql import month_tokens_query


@dataclass(frozen=True, slots=True)
class TenantUsage:
    """What one tenant used, all as of the same moment."""

    meters: list[tuple[Meter, list[QueryRow]]]
    """Each meter with its rows for the tenant's subject, in the order asked."""
    tokens_used: int
    """Tokens in and out of the tenant's finished turns started in the calendar month that
    ``tokens_since`` begins (the token quota's count)."""


class SqlUsageReader:
    """Reads ``TenantUsage`` in one transaction on SQLite and PostgreSQL."""

    def __init__(
        self, engine: AsyncEngine, *, query_limits: QueryLimits = DEFAULT_QUERY_LIMITS
    ) -> None:
        self._engine = engine
        self._query_limits = query_limits
        self._postgresql = engine.dialect.name == "postgresql"

    async def tenant_usage(
        self,
        *,
        tenant_id: str,
        meters: Sequence[Meter],
        from_: datetime | None,
        to: datetime | None,
        window_size: WindowSize | str | None,
        window_time_zone: str = "UTC",
        tokens_since: datetime,
    ) -> TenantUsage:
        """Each of ``meters`` for the tenant's subject, grouped by the meter's group keys, and
        the tokens of its turns in the month from ``tokens_since`` (which must begin a calendar
        month, UTC), from one snapshot of the database.

        Raises ``InvalidInput`` for a bad range, window or zone (before reading anything),
        ``QueryTooLarge`` for a range beyond the query limits, and
        ``Unavailable`` when the database fails."""
        queries = [
            (
                meter,
                build_query(
                    meter,
                    subjects=[tenant_id],
                    group_by=list(meter.group_by),
                    from_=from_,
                    to=to,
                    window_size=window_size,
                    window_time_zone=window_time_zone,
                    limits=self._query_limits,
                ),
            )
            for meter in meters
        ]
        try:
            async with self._engine.connect() as connection:
                snapshot = await self._snapshot(connection)
                async with snapshot.begin():
                    rows = [
                        (meter, await QueryRun(snapshot, query, self._query_limits).rows())
                        for meter, query in queries
                    ]
                    used = await snapshot.scalar(
                        month_tokens_query(tenant_id, month_start=tokens_since)
                    )
        except SQLAlchemyError as exc:
            raise Unavailable(f"reading usage failed ({type(exc).__name__})") from exc
        return TenantUsage(meters=rows, tokens_used=int(used or 0))

    async def _snapshot(self, connection: AsyncConnection) -> AsyncConnection:
        if not self._postgresql:
            return connection  # SQLite: a deferred BEGIN; its first read fixes the snapshot
        # Reset to the engine's default when the connection goes back to the pool.
        return await connection.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
