"""Health of the process for load balancers and orchestrators.

- ``GET /health``: every component (database, NATS, LLM provider); 503 when any is down,
  with the reason of each component that is down.
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


async def _reasons(request: Request, platform: Platform) -> dict[str, str | None]:
    """Each component and why it is down (``None`` when it is up). The database's and NATS's
    own error text stays in the log; the provider's is a redacted ``ProviderError`` message."""
    reasons: dict[str, str | None] = {
        "database": None if await platform.database_ok() else "the database did not answer",
        "llm": await platform.provider.check(),
    }
    events_ok = getattr(request.app.state, "events_ok", None)
    if events_ok is not None:
        reasons["nats"] = None if events_ok() else "not connected to NATS; reconnecting"
    return reasons


def _answer(reasons: dict[str, str | None], *, healthy: bool) -> JSONResponse:
    body = HealthPublic(
        status="ok" if healthy else "degraded",
        version=__version__,
        components={name: "down" if why else "ok" for name, why in reasons.items()},
        reasons={name: why for name, why in reasons.items() if why},
    )
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


@router.get("/health", response_model=HealthPublic, responses=_DOWN)
async def health(request: Request, platform: PlatformDep) -> JSONResponse:
    reasons = await _reasons(request, platform)
    return _answer(reasons, healthy=not any(reasons.values()))


@router.get("/health/live", response_model=LivePublic)
async def live() -> LivePublic:
    return LivePublic(status="ok", version=__version__)


@router.get("/health/ready", response_model=HealthPublic, responses=_DOWN)
async def ready(request: Request, platform: PlatformDep) -> JSONResponse:
    reasons = await _reasons(request, platform)
    return _answer(reasons, healthy=not any(why for name, why in reasons.items() if name != "llm"))
