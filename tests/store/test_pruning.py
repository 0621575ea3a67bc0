"""Storage stays bounded: relayed outbox rows and ended rate-limit windows are pruned in the
background, in batches; unsent rows and the current windows stay."""

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from kgents.config import Settings
from kgents.metering import events as usage_events
from kgents.platform import Platform
from kgents.records import UsageEvent
from kgents.store.limits_schema import RateWindowRow
from kgents.store.outbox_repo import SqlOutboxStore
from kgents.store.pruning import StoragePruner
from kgents.store.rate_limit_repo import SqlRequestCounter
from kgents.store.schema import OutboxRow
from kgents.tenancy.rate_limit import window_of
from tests.conftest import Api, make_settings
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def event() -> UsageEvent:
    return UsageEvent(id=str(uuid.uuid4()), type="api.request", subject="ten_1", time=NOW, data={})


async def count(engine: AsyncEngine, table: type[OutboxRow] | type[RateWindowRow]) -> int:
    async with engine.connect() as connection:
        return int(await connection.scalar(select(func.count()).select_from(table)) or 0)


async def test_one_pass_removes_only_what_nothing_needs(engine: AsyncEngine) -> None:
    outbox = SqlOutboxStore(engine)
    old, recent, unsent = [event() for _ in range(23)], [event()], [event(), event()]
    await outbox.add([*old, *recent, *unsent], at=NOW - timedelta(hours=3))
    await outbox.mark_sent([(e.source, e.id) for e in old], at=NOW - timedelta(hours=2))
    await outbox.mark_sent([(e.source, e.id) for e in recent], at=NOW - timedelta(minutes=5))
    counter = SqlRequestCounter(engine)
    for minutes in range(1, 15):
        await counter.increment("key_a", window_start=window_of(NOW - timedelta(minutes=minutes)))
    await counter.increment("key_a", window_start=window_of(NOW))
    await counter.increment("key_b", window_start=window_of(NOW))

    pruner = StoragePruner(engine, batch=5, sent_retention=timedelta(hours=1))
    pruned = await pruner.prune_once(now=NOW)

    assert pruned.sent_outbox == 23  # in batches of 5
    assert pruned.rate_windows == 12  # all but this minute and the one before
    assert await outbox.backlog() == 2
    assert await count(engine, OutboxRow) == 3  # the unsent two and the recent one
    assert await count(engine, RateWindowRow) == 4
    assert await pruner.prune_once(now=NOW) == type(pruned)(sent_outbox=0, rate_windows=0)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, nats_url: str) -> Settings:
    return make_settings(
        tmp_path / "data",
        database_url,
        nats_url,
        prune_interval_seconds=0.2,
        prune_batch_rows=200,
        outbox_sent_retention_seconds=0,
    )


BOUND = 10
"""Rows left at most once the background work caught up, whatever the number of turns."""


async def test_tables_stay_bounded_after_2000_turns(api: Api) -> None:
    """2,000 turns' usage events (session.message, api.request, llm.tokens: as a turn stores
    them) and a rate window per turn, stored directly; the running server's relay
    and pruner bring both tables back under a bound that does not depend on the turns."""
    platform: Platform = api.app.state.platform
    turns_done = 0
    for turns in (500, 1500):
        events, windows = [], []
        for n in range(turns_done, turns_done + turns):
            turn_id, at = f"trn_{n}", datetime.now(UTC)
            events += [
                usage_events.session_message(
                    tenant_id="ten_1", session_id="ses_1", turn_id=turn_id, message_length=5, at=at
                ),
                usage_events.api_request(
                    tenant_id="ten_1", endpoint="/x", method="POST", status_code=200, at=at
                ),
                usage_events.llm_tokens(
                    tenant_id="ten_1",
                    session_id="ses_1",
                    turn_id=turn_id,
                    tokens_in=1,
                    tokens_out=2,
                    model="demo",
                    estimated=False,
                    at=at,
                ),
            ]
            minute = window_of(at) - timedelta(minutes=n + 3)
            windows.append({"key_id": "key_a", "window_start": minute, "count": 1})
        await platform.outbox.add(events, at=datetime.now(UTC))
        async with platform.engine.begin() as connection:
            await connection.execute(insert(RateWindowRow), windows)
        api.app.state.relay.notify()
        turns_done += turns

        async def bounded() -> bool:
            outbox = await count(platform.engine, OutboxRow)
            windows = await count(platform.engine, RateWindowRow)
            return outbox <= BOUND and windows <= BOUND

        await eventually(bounded, seconds=60, every=0.2)
