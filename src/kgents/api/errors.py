"""The one error body, ``{"error": {"code", "message"}}``, for every failure of every route.

Domain errors map to statuses here and nowhere else. Validation errors, unknown routes and even
unexpected exceptions get the same body; no response ever carries a stack trace.

The OpenMeter-compatible surface (``/api/v1/...``) is the one exception: there the same errors are
``application/problem+json`` (``kgents.api.problems``), as OpenMeter answers them, and invalid
input is 400 rather than 422 (OpenMeter's spec has no 422).
"""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kgents.api.problems import new_instance, problem_response, wants_problem
from kgents.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    InvalidInput,
    InvalidResumePoint,
    KgentsError,
    NotFound,
    ProviderError,
    QueryTooLarge,
    QuotaExceeded,
    RateLimited,
    TooManyStreams,
    Unauthenticated,
    Unavailable,
)

logger = logging.getLogger(__name__)

_STATUS_BY_ERROR: tuple[tuple[type[KgentsError], int], ...] = (
    (QueryTooLarge, 400),  # well-formed, but too much work: a 400 on every surface
    (InvalidResumePoint, 400),
    (BadRequest, 400),
    (InvalidInput, 422),
    (Unauthenticated, 401),
    (QuotaExceeded, 402),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (RateLimited, 429),
    (TooManyStreams, 429),
    (Unavailable, 503),
)
_CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
}


_UNAVAILABLE_MESSAGES = {
    "events_unavailable": "the event stream is unavailable; try again shortly",
    "database_unavailable": "the database is busy or unreachable; try again shortly",
}


def public_message(error: KgentsError) -> str:
    """What a client is told of ``error``. An unavailable dependency's own words (a driver's
    or a server's error text) stay in the log: clients get a fixed sentence per code."""
    if isinstance(error, Unavailable):
        return _UNAVAILABLE_MESSAGES.get(
            error.code, "a service this request needs is unavailable; try again shortly"
        )
    return error.message


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def status_for(error: KgentsError) -> int:
    if isinstance(error, ProviderError):
        return 503 if error.retryable else 502
    for error_type, status in _STATUS_BY_ERROR:
        if isinstance(error, error_type):
            return status
    return 500


def _json_syntax_message(doc: object, error: Any) -> str:
    """Where the body stops being JSON, as line and column (counted as ``json`` counts them)."""
    position = error.get("loc", ("body", 0))[-1]
    reason = error.get("ctx", {}).get("error", "invalid JSON")
    if not isinstance(doc, str) or not isinstance(position, int):
        return f"the body is not valid JSON: {reason}"
    line = doc.count("\n", 0, position) + 1
    column = position - doc.rfind("\n", 0, position)
    return f"the body is not valid JSON: {reason} at line {line}, column {column}"


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors()[:5]:
        if error.get("type") == "json_invalid":
            return _json_syntax_message(exc.body, error)
        location = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        parts.append(f"{location or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _respond(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    *,
    instance: str | None = None,
) -> JSONResponse:
    if wants_problem(request.url.path):
        return problem_response(
            400 if status == 422 else status,
            detail=message,
            code=code,
            instance=instance,
            headers=headers,
        )
    return error_response(status, code, message, headers)


def database_unavailable_response(path: str) -> JSONResponse:
    """The ``503 database_unavailable`` answer for ``path`` (problem details under /api/v1)."""
    code = "database_unavailable"
    message, headers = _UNAVAILABLE_MESSAGES[code], {"Retry-After": "1"}
    if wants_problem(path):
        return problem_response(503, detail=message, code=code, headers=headers)
    return error_response(503, code, message, headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(KgentsError)
    async def _domain(request: Request, exc: KgentsError) -> JSONResponse:
        headers = None
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(exc.retry_after_seconds)}
        elif isinstance(exc, Unauthenticated):
            headers = {"WWW-Authenticate": "Bearer"}
        elif isinstance(exc, Unavailable):
            headers = {"Retry-After": "1"}  # database, event stream: back within moments
            logger.warning(
                "%s on %s %s: %s", exc.code, request.method, request.url.path, exc.message
            )
        return _respond(request, status_for(exc), exc.code, public_message(exc), headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _respond(request, 422, "validation_error", _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_BY_STATUS.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return _respond(request, exc.status_code, code, message, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        instance = new_instance()
        logger.error(
            "unhandled error on %s %s (%s)",
            request.method,
            request.url.path,
            instance,
            exc_info=exc,
        )
        return _respond(request, 500, "internal_error", "internal error", instance=instance)
