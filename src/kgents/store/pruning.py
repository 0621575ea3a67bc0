"""``StoragePruner``: removes, in the background, rows nothing needs any more.

- Usage outbox rows relayed (``sent_at`` set) more than ``sent_retention`` ago. Their events
  are in JetStream and the meter store, which dedupes by ``(source, id)`` for good; the
  retention only keeps the outbox's own dedupe of a client's quick retry.
- Rate-limit windows that ended (a key's count lives in its current minute only).

Unsent outbox rows are never touched; dead letters live in the meter store and stay until
replayed. Every replica runs a pruner: each deletes at most ``batch`` rows per short
transaction, and on PostgreSQL skips rows another replica is deleting (``SKIP LOCKED``).
"""

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Delete, Table, bindparam, delete, select, tuple_
from sqlalchemy.ext.asyncio import AsyncEngine

from kgents.clock import utc_now
from kgents.errors import KgentsError
from kgents.store.engine import for_writes
from kgents.store.limits_schema import RateWindowRow
from kgents.store.outbox_sql import OUTBOX

logger = logging.getLogger(__name__)

RATE_WINDOW_SLACK = timedelta(minutes=2)
"""Windows are dropped once they ended this long ago (room for replicas' clocks to differ)."""


def _batched_delete(table: Table, keys: list[str], *conditions: ColumnElement[bool]) -> Delete:
    """``DELETE`` of at most ``:limit`` rows matching ``conditions``, by primary key."""
    columns = [table.c[name] for name in keys]
    victims = (
        select(*columns)
        .where(*conditions)
        .limit(bindparam("limit"))
        .with_for_update(skip_locked=True)
    )
    return delete(table).where(tuple_(*columns).in_(victims))


RATE_WINDOWS: Table = RateWindowRow.__table__  # type: ignore[assignment]
_SENT = _batched_delete(
    OUTBOX,
    ["source", "id"],
    OUTBOX.c.sent_at.is_not(None),
    OUTBOX.c.sent_at < bindparam("before"),
)
_ENDED_WINDOWS = _batched_delete(
    RATE_WINDOWS, ["key_id", "window_start"], RATE_WINDOWS.c.window_start < bindparam("before")
)


@dataclass(frozen=True, slots=True)
class Pruned:
    """Rows removed by one pass."""

    sent_outbox: int
    rate_windows: int


class StoragePruner:
    def __init__(self, engine: AsyncEngine, *, batch: int, sent_retention: timedelta) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self._engine = for_writes(engine)
        self._batch = batch
        self._sent_retention = sent_retention

    async def prune_once(self, *, now: datetime | None = None) -> Pruned:
        """Remove everything prunable as of ``now``, ``batch`` rows per transaction."""
        now = now or utc_now()
        sent = await self._drain(_SENT, before=now - self._sent_retention)
        windows = await self._drain(_ENDED_WINDOWS, before=now - RATE_WINDOW_SLACK)
        return Pruned(sent_outbox=sent, rate_windows=windows)

    async def _drain(self, statement: Delete, *, before: datetime) -> int:
        total = 0
        while True:
            async with self._engine.begin() as connection:
                result = await connection.execute(
                    statement, {"limit": self._batch, "before": before}
                )
            total += result.rowcount
            if result.rowcount < self._batch:
                return total
            await asyncio.sleep(0)  # let other writers in between batches

    async def run(self, *, interval_seconds: float) -> None:
        """Prune every ``interval_seconds`` until cancelled; failures wait for the next pass."""
        while True:
            try:
                pruned = await self.prune_once()
            except KgentsError as exc:
                logger.warning("storage pruning postponed: %s", exc)
            except Exception:
                logger.exception("storage pruning failed; retrying at the next pass")
            else:
                if pruned.sent_outbox or pruned.rate_windows:
                    logger.debug("pruned %s", pruned)
            await asyncio.sleep(interval_seconds)
