"""Health of the process for load balancers and orchestrators.

- ``GET /health``: every component (database, NATS, LLM provider); 503 when any is down.
- ``GET /health/live``: the process serves requests (nothing else is checked).
- ``GET /health/ready``: the database and NATS answer; the provider's state is reported but
  never makes the replica unready (a provider outage would otherwise drop every replica).
"""

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kgents import __version__
from kgents.api.deps import PlatformDep
from kgents.api.schemas import HealthPublic, LivePublic
from kgents.platform import Platform

router = APIRouter(tags=["operations"])

_DOWN: dict[int | str, dict[str, Any]] = {
    503: {"model": HealthPublic, "description": "A component is down"}
}


async def _components(request: Request, platform: Platform) -> dict[str, str]:
    components = {
        "database": "ok" if await platform.database_ok() else "down",
        "llm": "ok" if await platform.provider.check() else "down",
    }
    events_ok = getattr(request.app.state, "events_ok", None)
    if events_ok is not None:
        components["nats"] = "ok" if events_ok() else "down"
    return components


def _answer(components: dict[str, str], *, healthy: bool) -> JSONResponse:
    body = HealthPublic(
        status="ok" if healthy else "degraded",
        version=__version__,
        components=components,
    )
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


@router.get("/health", response_model=HealthPublic, responses=_DOWN)
async def health(request: Request, platform: PlatformDep) -> JSONResponse:
    components = await _components(request, platform)
    return _answer(components, healthy=all(state == "ok" for state in components.values()))


@router.get("/health/live", response_model=LivePublic)
async def live() -> LivePublic:
    return LivePublic(status="ok", version=__version__)


@router.get("/health/ready", response_model=HealthPublic, responses=_DOWN)
async def ready(request: Request, platform: PlatformDep) -> JSONResponse:
    components = await _components(request, platform)
    needed = (state for name, state in components.items() if name != "llm")
    return _answer(components, healthy=all(state == "ok" for state in needed))
