"""RFC 7807 problem details (``application/problem+json``), the error body of ``/api/v1``.

The OpenMeter-compatible routes answer errors as OpenMeter does::

    {"type": "about:blank", "title": "Bad Request", "status": 400,
     "detail": "events[2].subject: must be a non-empty string",
     "instance": "urn:kgents:request:5b0c…", "code": "invalid_event",
     "errors": [{"index": 2, "field": "events[2].subject", "message": "must be …"}]}

``code`` is the stable snake_case code the rest of the API puts in ``error.code``; ``errors``
appears only on ingest, one entry per invalid field. ``instance`` names this occurrence (it is
logged with unexpected errors), so it is a fresh URN rather than the request path.
"""

import uuid
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi.responses import JSONResponse

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_PREFIX = "/api/v1/"

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "required": ["type", "title", "status", "detail", "instance", "code"],
    "properties": {
        "type": {"type": "string", "examples": ["about:blank"]},
        "title": {"type": "string", "examples": ["Bad Request"]},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string", "description": "This occurrence (a URN)"},
        "code": {"type": "string", "description": "Stable snake_case error code"},
        "errors": {
            "type": "array",
            "description": "Ingest only: one entry per invalid field",
            "items": {
                "type": "object",
                "required": ["index", "field", "message"],
                "properties": {
                    "index": {"type": "integer"},
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                },
            },
        },
    },
}
"""The JSON schema of ``problem_body``, for the OpenAPI document."""


def wants_problem(path: str) -> bool:
    """Whether errors of ``path`` are problem details (the OpenMeter-compatible surface)."""
    return path.startswith(PROBLEM_PREFIX) or path == PROBLEM_PREFIX.rstrip("/")


def new_instance() -> str:
    return f"urn:kgents:request:{uuid.uuid4().hex}"


def problem_body(
    status: int,
    *,
    detail: str,
    code: str,
    instance: str | None = None,
    extensions: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance or new_instance(),
        "code": code,
    }
    if extensions:
        body.update(extensions)
    return body


def problem_doc(description: str) -> dict[str, Any]:
    """An OpenAPI response (for a route's ``responses=``) answered with problem details."""
    return {
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": PROBLEM_SCHEMA}},
    }


def problem_response(
    status: int,
    *,
    detail: str,
    code: str,
    instance: str | None = None,
    extensions: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A problem-details response; ``extensions`` become extra top-level members."""
    return JSONResponse(
        problem_body(status, detail=detail, code=code, instance=instance, extensions=extensions),
        status_code=status,
        headers=dict(headers) if headers else None,
        media_type=PROBLEM_CONTENT_TYPE,
    )
