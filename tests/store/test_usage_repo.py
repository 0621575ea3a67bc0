"""A tenant's usage is read as one snapshot: a write committed between two of its reads shows
in none of them (SQLite and PostgreSQL)."""

import asyncio
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from kgents.metering.meters import DEFAULT_METERS, WindowSize
from kgents.records import UsageEvent
from kgents.store.engine import create_engine
from kgents.store.meter_repo import SqlMeterStore
from kgents.store.usage_repo import SqlUsageReader, TenantUsage

pytestmark = pytest.mark.anyio

T0 = datetime(2026, 3, 2, tzinfo=UTC)
TENANT = "ten_1"
TOKEN_METERS = [meter for meter in DEFAULT_METERS if meter.slug.startswith("llm_tokens_")]


def turn_tokens(event_id: str, tokens_in: int, tokens_out: int) -> UsageEvent:
    return UsageEvent(
        id=event_id,
        source="test",
        type="llm.tokens",
        subject=TENANT,
        time=T0 + timedelta(minutes=1),
        data={"tokens_in": tokens_in, "tokens_out": tokens_out, "model": "gpt"},
    )


async def read(reader: SqlUsageReader) -> TenantUsage:
    return await reader.tenant_usage(
        tenant_id=TENANT,
        meters=TOKEN_METERS,
        from_=T0,
        to=T0 + timedelta(days=1),
        window_size=WindowSize.DAY,
        tokens_since=T0.replace(day=1),
    )


def totals(usage: TenantUsage) -> dict[str, float]:
    return {meter.slug: sum(row.value for row in rows) for meter, rows in usage.meters}


async def test_a_write_between_two_meter_reads_is_in_none_of_them(engine: AsyncEngine) -> None:
    await SqlMeterStore(engine, DEFAULT_METERS).ingest([turn_tokens("a", 10, 4)])
    failures: list[BaseException] = []

    async def ingest_elsewhere() -> None:
        # Its own engine and event loop: a second process, as far as the database can tell.
        other = create_engine(engine.url)
        try:
            await SqlMeterStore(other, DEFAULT_METERS).ingest([turn_tokens("b", 5, 7)])
        finally:
            await other.dispose()

    def in_thread() -> None:
        try:
            asyncio.run(ingest_elsewhere())
        except BaseException as exc:
            failures.append(exc)

    written: list[str] = []

    def after_first_read(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        # Runs on the event loop's thread while the snapshot is open: the write commits now,
        # after the first meter was read and before the second one is.
        if not written and statement.lstrip().upper().startswith("SELECT"):
            written.append("b")
            thread = threading.Thread(target=in_thread)
            thread.start()
            thread.join(timeout=30)

    reader = SqlUsageReader(engine)
    event.listen(engine.sync_engine, "after_cursor_execute", after_first_read)
    try:
        usage = await read(reader)
    finally:
        event.remove(engine.sync_engine, "after_cursor_execute", after_first_read)
    assert written and not failures, failures
    assert totals(usage) == {"llm_tokens_in": 10.0, "llm_tokens_out": 4.0}
    # The write did commit: the next read has all of it.
    assert totals(await read(reader)) == {"llm_tokens_in": 15.0, "llm_tokens_out": 11.0}
