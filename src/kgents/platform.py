"""The composition root: builds every adapter and service from ``Settings``, and closes them.

The API's lifespan and the CLI both open a ``Platform``; nothing lives in module globals, so a
test can run several platforms (replicas) in one process.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from kgents.config import Settings
from kgents.data_dir import prepare_data_dir
from kgents.llm.base import LLMProvider
from kgents.llm.factory import build_provider
from kgents.metering.meters import load_meters
from kgents.metering.query import QueryLimits
from kgents.sessions.generation import TurnRunner
from kgents.sessions.ports import SessionEventLog
from kgents.sessions.service import SessionService
from kgents.sessions.supervisor import TurnSupervisor
from kgents.store.engine import create_engine, database_url, upgrade_database_async
from kgents.store.meter_repo import SqlMeterStore
from kgents.store.outbox_repo import SqlOutboxStore
from kgents.store.rate_limit_repo import SqlRequestCounter
from kgents.store.sessions_repo import SqlSessionStore
from kgents.store.sqlite_thread import writes_settled
from kgents.store.tenancy_repo import SqlTenancyStore
from kgents.store.usage_repo import SqlUsageReader
from kgents.tenancy.key_cache import KeyCache
from kgents.tenancy.quota import TokenQuota
from kgents.tenancy.rate_limit import RateLimiter
from kgents.tenancy.service import TenancyService
from kgents.tenancy.streams import StreamLimiter

logger = logging.getLogger(__name__)

DATABASE_CHECK_SECONDS = 3.0
"""Longest wait of a health check for the database (an unreachable host may never refuse)."""


@dataclass
class Platform:
    settings: Settings
    engine: AsyncEngine
    tenancy: TenancyService
    sessions: SessionService
    session_store: SqlSessionStore
    outbox: SqlOutboxStore
    provider: LLMProvider
    rate_limiter: RateLimiter
    quota: TokenQuota
    request_counter: SqlRequestCounter
    meters: SqlMeterStore
    usage: SqlUsageReader
    """Every meter and the quota of a tenant, read as one snapshot (``GET /v1/usage``)."""
    streams: StreamLimiter
    """The open streams of each key and tenant in this process, capped by their plan."""

    async def database_ok(self) -> bool:
        """True when the database answers ``SELECT 1`` within a few seconds."""
        try:
            async with asyncio.timeout(DATABASE_CHECK_SECONDS), self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
        except Exception:  # any failure (or no answer in time) means "not ok" for /health
            logger.warning("database health check failed", exc_info=True)
            return False
        return True


@dataclass
class Generation:
    """The parts that run turns: they need the event stream, so only the server builds them."""

    events: SessionEventLog
    runner: TurnRunner
    supervisor: TurnSupervisor


async def _warn_if_unusable(provider: LLMProvider) -> None:
    """A warning at start-up when the provider cannot answer (no key it accepts, a base URL
    that does not answer): the server starts anyway, and ``/health`` keeps saying why."""
    reason = await provider.check()
    if reason is not None:
        logger.warning("the %s provider cannot answer yet: %s", provider.name, reason)


@contextlib.asynccontextmanager
async def open_platform(settings: Settings, *, migrate: bool = True) -> AsyncIterator[Platform]:
    """Connect to the database (migrating it first) and build the services.

    An unusable meters file raises ``InvalidInput`` before anything is touched."""
    meters = load_meters(settings.meters_file)
    prepare_data_dir(settings)
    url = database_url(settings)
    if migrate:
        await upgrade_database_async(url)
    engine = create_engine(url)
    provider = build_provider(settings)
    if settings.llm_provider != "demo":
        await _warn_if_unusable(provider)
    session_store = SqlSessionStore(engine)
    request_counter = SqlRequestCounter(engine)
    quota = TokenQuota(session_store)
    query_limits = QueryLimits(
        max_windows=settings.meter_query_max_windows,
        max_span_days=settings.meter_query_max_span_days,
    )
    try:
        yield Platform(
            settings=settings,
            engine=engine,
            tenancy=TenancyService(
                store=SqlTenancyStore(engine),
                plans=settings.plans,
                key_cache=KeyCache(ttl_seconds=settings.api_key_cache_seconds),
            ),
            sessions=SessionService(
                store=session_store,
                max_message_chars=settings.max_message_chars,
                turn_lease=timedelta(seconds=settings.turn_lease_seconds),
            ),
            session_store=session_store,
            outbox=SqlOutboxStore(engine),
            provider=provider,
            rate_limiter=RateLimiter(request_counter),
            quota=quota,
            request_counter=request_counter,
            meters=SqlMeterStore(engine, meters, query_limits=query_limits),
            usage=SqlUsageReader(engine, query_limits=query_limits),
            streams=StreamLimiter(),
        )
    finally:
        await provider.aclose()
        await writes_settled(engine)
        await engine.dispose()


def build_generation(platform: Platform, events: SessionEventLog) -> Generation:
    runner = TurnRunner(
        store=platform.session_store,
        provider=platform.provider,
        events=events,
        buffer_size=platform.settings.stream_buffer_size,
    )
    return Generation(events=events, runner=runner, supervisor=TurnSupervisor(runner))
