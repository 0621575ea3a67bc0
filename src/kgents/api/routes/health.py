"""``GET /health``: the state of each component, 503 when any is down."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from kgents import __version__
from kgents.api.deps import PlatformDep
from kgents.api.schemas import HealthPublic

router = APIRouter(tags=["operations"])


@router.get(
    "/health",
    response_model=HealthPublic,
    responses={503: {"model": HealthPublic, "description": "A component is down"}},
)
async def health(request: Request, platform: PlatformDep) -> JSONResponse:
    components = {
        "database": "ok" if await platform.database_ok() else "down",
        "llm": "ok" if await platform.provider.check() else "down",
    }
    events_ok = getattr(request.app.state, "events_ok", None)
    if events_ok is not None:
        components["nats"] = "ok" if events_ok() else "down"
    healthy = all(state == "ok" for state in components.values())
    body = HealthPublic(
        status="ok" if healthy else "degraded", version=__version__, components=components
    )
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)
