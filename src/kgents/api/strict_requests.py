"""What every route of the /v1 API refuses before its handler runs: a body in a media type
other than JSON (415) and a query parameter the route does not take (422, as an unknown body
field is). The OpenMeter-compatible routes (/api/v1) keep OpenMeter's own rules."""

import email.message
from collections.abc import Iterator

from fastapi import Depends
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute

JSON = "application/json"


def _is_json(content_type: str) -> bool:
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _query_names(dependant: Dependant) -> Iterator[str]:
    for field in dependant.query_params:
        yield field.alias
    for sub in dependant.dependencies:
        yield from _query_names(sub)


def _route_query_names(route: BaseRoute) -> set[str]:
    dependant: Dependant | None = getattr(route, "dependant", None)
    return set(_query_names(dependant)) if dependant is not None else set()


async def strict_request(connection: HTTPConnection) -> None:
    """415 for a non-JSON body, 422 ``validation_error`` naming unknown query parameters."""
    content_type = connection.headers.get("content-type")
    has_body = connection.headers.get("content-length", "0") != "0" or (
        "transfer-encoding" in connection.headers
    )
    if content_type and has_body and not _is_json(content_type):
        raise HTTPException(415, f"send the body as {JSON}, not {content_type}")
    route = connection.scope.get("route")
    if route is None:
        return
    known = _route_query_names(route)
    unknown = [name for name in connection.query_params if name not in known]
    if unknown:
        raise RequestValidationError(
            [
                {
                    "type": "extra_forbidden",
                    "loc": ("query", name),
                    "msg": "unknown parameter",
                    "input": connection.query_params[name],
                }
                for name in dict.fromkeys(unknown)
            ]
        )


StrictRequest = Depends(strict_request)
