"""``RequestObserver``: the pure ASGI middleware that observes every HTTP request.

- Gives the request an id (the caller's ``X-Request-ID`` when it is a plain token, a new
  ``req_…`` otherwise), returns it as ``X-Request-ID`` and makes it, the tenant and the session
  the logging context of everything the request does.
- Names the process that answered in ``X-Kgents-Worker`` (its pid), so the workers of
  ``kgents serve --workers N`` can be told apart.
- Counts the request by method, route template and status, times it, and keeps the number of
  open Server-Sent Events responses.
- Logs one ``kgents.access`` line when the response is over: method, route, path, status and
  duration; never headers, query strings or bodies. Answered health checks and scrapes are
  logged at DEBUG. A client that went away before any answer started is logged (and counted)
  as a disconnect, status ``499`` (nginx's "client closed request"), not as a 500.
"""

import logging
import os
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kgents.ids import new_id
from kgents.observability.logging import RequestContext, enter_request, leave_request
from kgents.observability.metrics import Metrics

access_logger = logging.getLogger("kgents.access")

CLIENT_CLOSED_REQUEST = 499
REQUEST_ID_HEADER = b"x-request-id"
WORKER_HEADER = b"x-kgents-worker"
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
UNMATCHED_ROUTE = "unmatched"
# Polled by load balancers and Prometheus: their successes are logged at DEBUG, not INFO.
QUIET_ROUTES = frozenset({"/health", "/health/live", "/health/ready", "/metrics"})


def incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.fullmatch(value):
            return str(value.decode())
    return None


def route_template(scope: Scope) -> str:
    """The matched route's path template (``/v1/kgent/sessions/{session_id}``), so that the
    label's values stay few; ``unmatched`` when no route matched."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) and path else UNMATCHED_ROUTE


class RequestObserver:
    def __init__(self, app: ASGIApp, *, metrics: Metrics, access_log: bool = True) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self._worker = (WORKER_HEADER, str(os.getpid()).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = incoming_request_id(scope) or new_id("req")
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500  # what the client gets if the application fails before answering
        started_response = streaming = client_left = False
        metrics = self.metrics
        worker = self._worker

        async def observed_receive() -> Message:
            nonlocal client_left
            message = await receive()
            if message["type"] == "http.disconnect":
                client_left = True
            return message

        async def observed_send(message: Message) -> None:
            nonlocal status, streaming, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER, request_id.encode()))
                headers.append(worker)
                message["headers"] = headers
                streaming = _is_event_stream(headers)
                if streaming:
                    metrics.sse_streams.inc()
            await send(message)

        token = enter_request(RequestContext(request_id=request_id, scope=scope))
        try:
            await self.app(scope, observed_receive, observed_send)
        finally:
            if client_left and not started_response:
                status = CLIENT_CLOSED_REQUEST
            if streaming:
                metrics.sse_streams.dec()
            elapsed = time.perf_counter() - started
            method = str(scope.get("method", ""))
            route = route_template(scope)
            metrics.http_requests.labels(method, route, str(status)).inc()
            if not streaming:
                metrics.http_duration.labels(method, route).observe(elapsed)
            if self.access_log:
                self._log(scope, method, route, status, elapsed)
            leave_request(token)

    @staticmethod
    def _log(scope: Scope, method: str, route: str, status: int, elapsed: float) -> None:
        if status == CLIENT_CLOSED_REQUEST:
            level = logging.INFO
        elif status >= 500:
            level = logging.WARNING
        elif route in QUIET_ROUTES and status < 400:
            level = logging.DEBUG
        else:
            level = logging.INFO
        access_logger.log(
            level,
            "%s %s %d%s",
            method,
            route,
            status,
            " (client disconnected)" if status == CLIENT_CLOSED_REQUEST else "",
            extra={
                "method": method,
                "route": route,
                "path": scope.get("path", ""),
                "status": status,
                "duration_ms": round(elapsed * 1000, 1),
            },
        )


def _is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(
        name.lower() == b"content-type" and value.startswith(b"text/event-stream")
        for name, value in headers
    )
