"""The token quota's count (``tenant_month_tokens``): kept by the transaction that finishes a
turn, per calendar month of the turn's start, equal to the sum over the finished turns; the
migration that adds it fills it from the turns already stored (SQLite and PostgreSQL)."""

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from kgents.clock import utc_now
from kgents.config import Settings
from kgents.platform import Platform, open_platform
from kgents.records import Turn
from kgents.store.engine import alembic_config
from tests.support.database import async_url
from tests.support.turns import running_turn, store_running_turn

pytestmark = pytest.mark.anyio

FEBRUARY = datetime(2026, 2, 28, 23, 59, tzinfo=UTC)
MARCH = datetime(2026, 3, 1, tzinfo=UTC)


async def finish_a_turn(
    platform: Platform, session_id: str, tenant_id: str, *, started_at: datetime, tokens: int
) -> Turn:
    turn, question = running_turn(session_id, tenant_id, started_at=started_at)
    store = platform.session_store
    await store_running_turn(store, turn, question, lease_until=utc_now())
    final = replace(turn, status="complete", tokens_in=tokens // 2, tokens_out=tokens - tokens // 2)
    assert await store.finish_turn(
        replace(final, finished_at=utc_now()), assistant_message=None, events=[]
    )
    return final


async def month_counts(settings: Settings) -> list[tuple[str, int]]:
    async with open_platform(settings) as platform:
        return [
            (tenant.id, await platform.session_store.tokens_used(tenant.id, since=month))
            for tenant in (await platform.tenancy.list_tenants(limit=100, offset=0))[0]
            for month in (FEBRUARY.replace(day=1, hour=0, minute=0), MARCH)
        ]


async def test_the_count_follows_finished_turns_and_is_rebuilt_by_its_migration(
    tmp_path: Path, database_url: str
) -> None:
    settings = Settings(data_dir=tmp_path, database_url=database_url)
    async with open_platform(settings) as platform:
        tenants = [await platform.tenancy.create_tenant(name=n, plan="pro") for n in "ab"]
        for tenant, tokens in zip(tenants, (10, 1000), strict=True):
            session = await platform.sessions.create_session(
                tenant_id=tenant.id, title=None, agent_type="kgent", mode="reflect"
            )
            # A turn started on the last minute of February counts in February, whenever
            # it finishes; a turn finished twice (recovery raced the generation) counts once.
            late = await finish_a_turn(
                platform, session.id, tenant.id, started_at=FEBRUARY, tokens=tokens
            )
            assert not await platform.session_store.finish_turn(
                replace(late, finished_at=utc_now()), assistant_message=None, events=[]
            )
            for offset in range(3):
                await finish_a_turn(
                    platform,
                    session.id,
                    tenant.id,
                    started_at=MARCH + timedelta(days=offset),
                    tokens=tokens + offset,
                )
            # A running turn counts nothing yet.
            still_running, asking = running_turn(
                session.id, tenant.id, started_at=MARCH, tokens_in=500
            )
            await store_running_turn(
                platform.session_store, still_running, asking, lease_until=utc_now()
            )
        counted = sorted(await month_counts(settings))
        mid_month = MARCH + timedelta(days=2)
        with pytest.raises(ValueError, match="does not begin a calendar month"):
            await platform.session_store.tokens_used(tenants[0].id, since=mid_month)

    a, b = (tenant.id for tenant in tenants)
    assert counted == sorted([(a, 10), (a, 33), (b, 1000), (b, 3003)])

    # Down to the revision before the count, and up again: rebuilt from the turns alone.
    config = alembic_config(async_url(database_url))
    await asyncio.to_thread(command.downgrade, config, "0003")
    await asyncio.to_thread(command.upgrade, config, "head")
    assert sorted(await month_counts(settings)) == counted


async def test_a_tenant_without_finished_turns_has_used_nothing(
    tmp_path: Path, database_url: str
) -> None:
    async with open_platform(Settings(data_dir=tmp_path, database_url=database_url)) as platform:
        tenant = await platform.tenancy.create_tenant(name="new", plan="pro")
        assert await platform.session_store.tokens_used(tenant.id, since=MARCH) == 0
        engine = platform.engine
        async with engine.connect() as connection:
            rows = await connection.scalar(text("SELECT count(*) FROM tenant_month_tokens"))
        assert rows == 0
