"""``create_app(settings)``: the FastAPI application and its lifespan.

The lifespan opens the platform (database, migrations, LLM provider), the event stream
(embedded or external NATS JetStream) and the background workers, and closes them in reverse.
"""

import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from kgents import __version__
from kgents.api.body_limit import BodyLimitMiddleware
from kgents.api.errors import install_error_handlers
from kgents.api.routes import (
    admin_metering,
    budgets,
    console,
    docs,
    health,
    openmeter,
    session_socket,
    sessions,
    tenants,
    usage,
)
from kgents.api.routes import metrics as metrics_routes
from kgents.api.schemas import ErrorBody
from kgents.api.security_headers import SecurityHeadersMiddleware
from kgents.api.strict_requests import StrictRequest
from kgents.api.usage_middleware import RequestUsageMiddleware
from kgents.clock import utc_now
from kgents.config import Settings
from kgents.observability.event_log import MeasuredEventLog
from kgents.observability.metrics import Metrics
from kgents.observability.middleware import RequestObserver
from kgents.platform import build_generation, open_platform
from kgents.records import UsageEvent
from kgents.streaming.runtime import open_streaming
from kgents.tenancy.admin_token import load_or_create_admin_token
from kgents.workers import running_workers

logger = logging.getLogger(__name__)

# What any route reading the database can also answer (``errors._database``), for the
# OpenAPI document.
DATABASE_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "Database busy or unreachable; retry shortly"},
}
# What any admin route can also answer, for the OpenAPI document.
ADMIN_ROUTE_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "A tenant's API key instead of the admin token"},
    **DATABASE_ERRORS,
}
# What any route taking a tenant's API key can also answer, for the OpenAPI document.
API_KEY_ROUTE_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "Tenant suspended"},
    413: {"model": ErrorBody, "description": "Request body too large"},
    429: {"model": ErrorBody, "description": "Rate limit of the API key exceeded"},
    **DATABASE_ERRORS,
}


YOUNG_COLLECTION_THRESHOLD = 7_000
"""New container objects (net of those freed) before a young collection; Python's default is
700, which a burst of turns reached every ~2 turns."""


def tune_garbage_collector() -> None:
    """Collect, then move every object still alive (modules, the platform, the SDKs, the
    routes: all of them kept until the process ends) out of the cyclic garbage collector's
    reach (``gc.freeze``), and collect the young generation ten times less often. Otherwise each
    full collection walked them all, a pause of 100-200 ms on the event loop that every stream
    in flight waited for, and young collections cost ~0.2 ms of CPU per turn
    (``bench/RESULTS.md``)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *gc.get_threshold()[1:])


def create_app(settings: Settings, *, migrate: bool = True, serving: bool = False) -> FastAPI:
    """A new application for ``settings``; nothing is shared between two apps.

    ``migrate=False`` when the database was migrated before (the workers of ``kgents serve
    --workers N``: their parent migrates once). ``serving``: the app is the process's one
    server (``kgents serve``), which tunes the process's garbage collector once started
    (``tune_garbage_collector``)."""
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with (
            open_platform(settings, migrate=migrate) as platform,
            open_streaming(settings) as streaming,
        ):
            generation = build_generation(platform, MeasuredEventLog(streaming.events, metrics))
            app.state.platform = platform
            app.state.generation = generation
            app.state.admin_token = load_or_create_admin_token(settings).value
            app.state.events_ok = streaming.is_connected
            metrics.watch(
                outbox_backlog=platform.outbox.backlog,
                nats_connected=streaming.is_connected,
                turns_running=lambda: generation.supervisor.active,
                dead_letters=platform.meters.dead_letter_count,
                follows=streaming.events.hub,
            )
            # Rebuild the rollups of new or changed meters before anything is ingested.
            await platform.meters.sync_meters()
            app.state.meters_loaded_at = utc_now()
            async with running_workers(platform, streaming, generation) as workers:
                app.state.relay = workers.relay
                app.state.metering_processor = workers.metering  # GET /v1/admin/metering
                metrics.watch_metering(lambda: workers.metering.stats)
                if serving:
                    tune_garbage_collector()
                try:
                    yield
                finally:
                    await generation.supervisor.shutdown(
                        grace_seconds=settings.shutdown_grace_seconds
                    )

    app = FastAPI(
        title="kgents",
        version=__version__,
        summary="Conversations with K-gent: streamed over NATS JetStream, metered exactly once.",
        lifespan=lifespan,
        docs_url=None,  # served by routes/docs.py from the package, not from a CDN
        redoc_url=None,
        openapi_tags=[session_socket.OPENAPI_TAG],
    )
    app.state.metrics = metrics
    install_error_handlers(app)
    app.include_router(health.router)
    strict = [StrictRequest]  # JSON bodies, known query parameters (not OpenMeter's routes)
    app.include_router(tenants.router, responses=ADMIN_ROUTE_ERRORS, dependencies=strict)
    app.include_router(sessions.router, responses=API_KEY_ROUTE_ERRORS, dependencies=strict)
    app.include_router(budgets.router, responses=API_KEY_ROUTE_ERRORS, dependencies=strict)
    app.include_router(usage.router, responses=API_KEY_ROUTE_ERRORS, dependencies=strict)
    app.include_router(session_socket.router)
    app.include_router(openmeter.router)
    app.include_router(admin_metering.router, responses=ADMIN_ROUTE_ERRORS, dependencies=strict)
    app.include_router(metrics_routes.router)
    console.install(app)
    docs.install(app)

    async def record_usage(events: list[UsageEvent]) -> None:
        await app.state.platform.outbox.add(events, at=utc_now())

    app.add_middleware(RequestUsageMiddleware, record=record_usage)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        timeout_seconds=settings.request_body_timeout_seconds,
        max_head_bytes=settings.max_header_bytes,
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "Last-Event-ID"],
            expose_headers=[
                "Retry-After",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-Request-ID",
            ],
        )
    app.add_middleware(SecurityHeadersMiddleware, docs_paths=docs.DOCS_PAGES)
    app.add_middleware(RequestObserver, metrics=metrics)
    return app
