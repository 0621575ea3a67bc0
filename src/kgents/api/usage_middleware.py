"""Per-request bookkeeping of authenticated requests: rate-limit headers and ``api.request``.

When the response starts, the ``X-RateLimit-*`` headers found by authentication are added, and
an ``api.request`` usage event with the final status code is stored in the outbox before the
status line leaves, so a request that was answered is never missing from metering: when the
event cannot be stored, the answer is replaced by ``503 database_unavailable`` (the route's
own response is dropped). A route that stores the event itself, in the transaction of what it
does (a streamed turn: DESIGN, flow step 2), says so with ``mark_usage_recorded`` and the
middleware stores nothing more.
"""

import logging
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kgents.api.errors import database_unavailable_response
from kgents.clock import utc_now
from kgents.metering import events as usage_events
from kgents.records import UsageEvent
from kgents.tenancy.rate_limit import RateStatus

logger = logging.getLogger(__name__)

RecordUsage = Callable[[list[UsageEvent]], Awaitable[None]]
_RECORDED = "api_request_recorded"


class _ResponseReplaced(Exception):
    """Raised into the route's response once it was replaced by a 503: it stops there."""


def request_usage_event(scope: Scope, *, tenant_id: str, status_code: int) -> UsageEvent:
    """The ``api.request`` event of the request of ``scope`` answered with ``status_code``."""
    route = scope.get("route")
    endpoint = getattr(route, "path", None) or scope.get("path", "")
    return usage_events.api_request(
        tenant_id=tenant_id,
        endpoint=endpoint,
        method=scope.get("method", ""),
        status_code=status_code,
        at=utc_now(),
    )


def mark_usage_recorded(scope: Scope) -> None:
    """The request's ``api.request`` is stored (committed) already: do not store another."""
    scope.setdefault("state", {})[_RECORDED] = True


class RequestUsageMiddleware:
    def __init__(self, app: ASGIApp, *, record: RecordUsage) -> None:
        self.app = app
        self.record = record

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        replaced = False

        async def send_with_usage(message: Message) -> None:
            nonlocal replaced
            if replaced:
                raise _ResponseReplaced
            if message["type"] == "http.response.start":
                rate: RateStatus | None = state.get("rate_status")
                if rate is not None:
                    headers = list(message.get("headers", []))
                    headers.extend(
                        (name.lower().encode(), value.encode())
                        for name, value in rate.headers().items()
                    )
                    message["headers"] = headers
                tenant_id: str | None = state.get("tenant_id")
                if tenant_id is not None and not state.get(_RECORDED):
                    if not await self._record(scope, tenant_id, int(message["status"])):
                        replaced = True
                        response = database_unavailable_response(scope.get("path", ""))
                        await response(scope, receive, send)
                        raise _ResponseReplaced
            await send(message)

        try:
            await self.app(scope, receive, send_with_usage)
        except _ResponseReplaced:
            if not replaced:
                raise

    async def _record(self, scope: Scope, tenant_id: str, status_code: int) -> bool:
        """Store the request's ``api.request``; ``False`` (logged) when it cannot be."""
        event = request_usage_event(scope, tenant_id=tenant_id, status_code=status_code)
        try:
            await self.record([event])
        except Exception:
            # Not answered as the route meant: an answer that is not metered is not given.
            logger.exception("could not record api.request for tenant %s: answering 503", tenant_id)
            return False
        return True
