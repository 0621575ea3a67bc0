"""Dependencies for routes: the platform, the admin check and the calling tenant.

A route of the tenant API takes the principal of the scope it needs (``SessionsDep``,
``UsageDep``): a key without that scope is refused with 403 ``scope_missing``."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from kgents.errors import BadRequest, Forbidden, KgentsError, Unauthenticated
from kgents.platform import Generation, Platform
from kgents.tenancy.keys import looks_like_api_key, tokens_match
from kgents.tenancy.rate_limit import RateLimitExceeded
from kgents.tenancy.service import Principal

_bearer = HTTPBearer(auto_error=False, description="API key or admin token")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="API key")


# Async, though they only read app state: FastAPI runs a plain ``def`` dependency in its thread
# pool, a hand-off to a worker thread (and back) on every request.
async def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


async def get_generation(request: Request) -> Generation:
    generation: Generation = request.app.state.generation
    return generation


PlatformDep = Annotated[Platform, Depends(get_platform)]
GenerationDep = Annotated[Generation, Depends(get_generation)]
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
ApiKeyHeaderDep = Annotated[str | None, Depends(_api_key_header)]


async def require_admin(request: Request, platform: PlatformDep, bearer: BearerDep) -> None:
    """The admin token, compared in constant time. A tenant's live API key in its place is
    403 ``admin_only`` (the caller is known, the route is not theirs); anything else is 401."""
    expected: str = request.app.state.admin_token
    if bearer is not None and tokens_match(bearer.credentials, expected):
        return
    # X-API-Key is read, not declared: the admin routes' only scheme is the bearer token.
    raw = bearer.credentials if bearer is not None else request.headers.get("x-api-key")
    if raw and looks_like_api_key(raw):
        try:
            await platform.tenancy.authenticate(raw)
        except KgentsError:
            pass
        else:
            raise Forbidden("this route needs the admin token, not an API key", code="admin_only")
    raise Unauthenticated("admin token required")


async def get_uncounted_principal(
    request: Request, platform: PlatformDep, bearer: BearerDep, api_key: ApiKeyHeaderDep
) -> Principal:
    """The tenant behind ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, not yet
    counted against the key's rate limit: for a route that counts the request in its own
    transaction (``RateCharge``) and sets ``request.state.rate_status`` itself."""
    if bearer is not None and api_key and not tokens_match(bearer.credentials, api_key):
        raise BadRequest(
            "two different API keys (Authorization and X-API-Key): send one",
            code="conflicting_api_keys",
        )
    raw = bearer.credentials if bearer is not None else api_key
    if not raw:
        raise Unauthenticated("API key required (Authorization: Bearer <key> or X-API-Key)")
    principal = await platform.tenancy.authenticate(raw)
    request.state.principal = principal
    request.state.tenant_id = principal.tenant.id  # for api.request metering
    return principal


UncountedPrincipalDep = Annotated[Principal, Depends(get_uncounted_principal)]


async def get_principal(
    request: Request, platform: PlatformDep, bearer: BearerDep, api_key: ApiKeyHeaderDep
) -> Principal:
    """The tenant behind ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, with this
    request counted against the key's rate limit (``RateLimited`` when over it)."""
    principal = await get_uncounted_principal(request, platform, bearer, api_key)
    try:
        request.state.rate_status = await platform.rate_limiter.hit(
            key_id=principal.key.id, limit=principal.plan.requests_per_minute
        )
    except RateLimitExceeded as exc:
        request.state.rate_status = exc.status
        raise
    return principal


AdminDep = Depends(require_admin)
PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def get_sessions_principal(principal: PrincipalDep) -> Principal:
    principal.require_scope("sessions")
    return principal


async def get_uncounted_sessions_principal(principal: UncountedPrincipalDep) -> Principal:
    principal.require_scope("sessions")
    return principal


async def get_usage_principal(principal: PrincipalDep) -> Principal:
    principal.require_scope("usage")
    return principal


SessionsDep = Annotated[Principal, Depends(get_sessions_principal)]
"""A key with the ``sessions`` scope, counted against its rate limit."""
UncountedSessionsDep = Annotated[Principal, Depends(get_uncounted_sessions_principal)]
"""A key with the ``sessions`` scope, for a route that counts the request itself."""
UsageDep = Annotated[Principal, Depends(get_usage_principal)]
"""A key with the ``usage`` scope, counted against its rate limit."""
