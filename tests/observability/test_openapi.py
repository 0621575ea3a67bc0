"""``/openapi.json`` and ``/docs``: a valid spec in which every operation lists its models and
its error responses, and against which real answers of a live server validate (what a
generated client relies on)."""

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import httpx
import pytest
from fastapi import FastAPI
from openapi_core import OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_spec_validator import validate
from werkzeug.datastructures import Headers, ImmutableMultiDict

from kgents.api.app import create_app
from tests.conftest import make_settings
from tests.observability.conftest import ADMIN, Live

ERROR_STATUSES = {400, 401, 402, 403, 404, 409, 413, 422, 429, 502, 503}
# Operations that need the event stream, so answer 503 while NATS is away.
NEEDS_EVENTS = {
    ("post", "/v1/kgent/sessions/{session_id}/messages"),
    ("get", "/v1/kgent/sessions/{session_id}/events"),
    ("post", "/v1/kgent/sessions/{session_id}/cancel"),
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    data = tmp_path_factory.mktemp("openapi")
    return create_app(make_settings(data, f"sqlite:///{data / 'k.db'}", "nats://127.0.0.1:1"))


@pytest.fixture(scope="module")
def spec(app: FastAPI) -> dict[str, Any]:
    return app.openapi()


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


HEALTH_CHECKS = ("/health", "/health/ready")  # a 503 from these is the health body


def expected_errors(method: str, path: str, operation: dict[str, Any]) -> set[int]:
    """The error statuses an operation can answer, from how it is declared."""
    security = [name for requirement in operation.get("security", []) for name in requirement]
    expected: set[int] = set()
    if security:
        expected.add(401)
    if "APIKeyHeader" in security:
        expected |= {403, 429}  # suspended tenant; rate limit of the key
    if operation.get("parameters") or "requestBody" in operation:
        expected.add(400 if path.startswith("/api/v1/") else 422)  # OpenMeter answers 400
    if "requestBody" in operation:
        expected.add(413)
    if "{" in path:
        expected.add(404)
    if (method, path) in NEEDS_EVENTS:
        expected.add(503)
    if path == "/v1/kgent/sessions/{session_id}/messages" and method == "post":
        expected |= {402, 409}  # token quota; a turn already running
    if path.endswith("/cancel"):
        expected.add(409)  # no turn running
    if path in HEALTH_CHECKS:
        expected.add(503)
    return expected


def test_the_spec_is_valid_and_served(app: FastAPI, spec: dict[str, Any]) -> None:
    validate(spec)

    async def fetch() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kgents.test") as c:
            return await c.get("/openapi.json"), await c.get("/docs")

    import asyncio

    served, docs = asyncio.run(fetch())
    assert served.json() == spec
    assert docs.status_code == 200 and "swagger-ui" in docs.text and "/openapi.json" in docs.text


def test_every_operation_lists_its_errors_and_models(spec: dict[str, Any]) -> None:
    missing = []
    for method, path, operation in operations(spec):
        listed = {int(status) for status in operation["responses"] if status.isdigit()}
        for status in sorted(expected_errors(method, path, operation) - listed):
            missing.append(f"{method.upper()} {path}: {status}")
        for status, response in operation["responses"].items():
            if not status.isdigit():  # a range: only OpenMeter's routes use one, for problems
                assert path.startswith("/api/v1/") and status == "4XX", f"{method} {path}"
                problem = response.get("content", {}).get("application/problem+json", {})
                assert problem.get("schema"), f"{method} {path} {status} has no problem schema"
                continue
            code = int(status)
            if code in ERROR_STATUSES:
                content = response.get("content", {})
                if path.startswith("/api/v1/"):
                    # OpenMeter's own contract (problem+json) is tested in tests/openmeter; the
                    # body limit answers there before any route, so its 413 is checked here.
                    if code == 413:
                        problem = content.get("application/problem+json", {})
                        assert problem.get("schema"), f"{method} {path} 413 has no problem schema"
                    continue
                schemas = [media.get("schema", {}) for media in content.values()]
                assert schemas and all(schemas), f"{method} {path} {status} has no schema"
                if path not in HEALTH_CHECKS:
                    assert {"$ref": "#/components/schemas/ErrorBody"} in schemas, (
                        f"{method} {path} {status} is not an ErrorBody"
                    )
            elif 200 <= code < 300 and code != 204:
                content = response.get("content", {})
                assert content, f"{method} {path} {status} has no content"
                assert all(media.get("schema") for media in content.values()), (
                    f"{method} {path} {status} has an untyped body"
                )
        if "requestBody" in operation:
            body = operation["requestBody"]["content"]
            assert all(media.get("schema") for media in body.values()), f"{method} {path}"
    assert not missing, "operations missing error responses:\n" + "\n".join(missing)


def test_openmeter_routes_do_not_document_a_422_they_never_answer(spec: dict[str, Any]) -> None:
    for method, path, operation in operations(spec):
        if path.startswith("/api/v1/"):
            assert "422" not in operation["responses"], f"{method} {path}"


def test_event_streams_are_documented_as_sse_only(spec: dict[str, Any]) -> None:
    sessions = "/v1/kgent/sessions/{session_id}"
    follow = spec["paths"][f"{sessions}/events"]["get"]["responses"]["200"]["content"]
    assert set(follow) == {"text/event-stream"}
    # A turn answers JSON (201, stream=false) or, streamed, SSE (200) only.
    send = spec["paths"][f"{sessions}/messages"]["post"]["responses"]
    assert set(send["200"]["content"]) == {"text/event-stream"}
    assert set(send["201"]["content"]) == {"application/json"}


# Real answers against the spec, as a generated client would read them.


class Request:
    """An ``httpx.Request`` as openapi-core's request protocol."""

    def __init__(self, request: httpx.Request) -> None:
        self.request = request
        query = parse_qsl(request.url.query.decode(), keep_blank_values=True)
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(query),
            header=Headers(list(request.headers.items())),
            cookie=ImmutableMultiDict(),
        )
        self.host_url = f"{request.url.scheme}://{request.url.netloc.decode()}"
        self.path = request.url.path
        self.method = request.method.lower()
        self.body = request.content or None
        self.content_type = request.headers.get("content-type", "")


class Response:
    """An ``httpx.Response`` as openapi-core's response protocol."""

    def __init__(self, response: httpx.Response) -> None:
        self.data = response.content
        self.status_code = response.status_code
        self.content_type = response.headers.get("content-type", "").split(";")[0]
        self.headers = Headers(list(response.headers.items()))


def test_real_answers_match_the_spec(live: Live, spec: dict[str, Any]) -> None:
    openapi = OpenAPI.from_dict(spec)
    statuses: list[tuple[str, int]] = []

    def call(method: str, url: str, **kwargs: Any) -> httpx.Response:
        request = live.client.build_request(method, url, **kwargs)
        response = live.client.send(request)
        openapi.validate_response(Request(request), Response(response))
        statuses.append((f"{method} {url}", response.status_code))
        return response

    key = live.headers
    session = call("POST", "/v1/kgent/sessions", json={"title": "t"}, headers=key).json()
    sid = session["id"]
    call("GET", "/v1/kgent/sessions", params={"limit": 5}, headers=key)
    call("GET", f"/v1/kgent/sessions/{sid}", headers=key)
    call(
        "POST",
        f"/v1/kgent/sessions/{sid}/messages",
        json={"message": "hi", "stream": False},
        headers=key,
    )
    call("GET", f"/v1/kgent/sessions/{sid}/messages", headers=key)
    call("POST", f"/v1/kgent/sessions/{sid}/cancel", headers=key)  # 409: nothing runs
    call("GET", "/v1/kgent/sessions/ses_missing", headers=key)  # 404
    call("POST", "/v1/kgent/sessions", json={"mode": "shout"}, headers=key)  # 422
    call("GET", "/v1/kgent/sessions", headers={"X-API-Key": "kg_live_nope"})  # 401
    call(
        "POST",
        "/v1/kgent/sessions",
        content=b"x" * 2_000_000,
        headers={**key, "Content-Type": "application/json"},
    )  # 413
    call("DELETE", f"/v1/kgent/sessions/{sid}", headers=key)
    tenant = call("POST", "/v1/tenants", json={"name": "globex"}, headers=ADMIN).json()
    call("GET", f"/v1/tenants/{tenant['id']}", headers=ADMIN)
    call("PATCH", f"/v1/tenants/{tenant['id']}", json={"plan": "pro"}, headers=ADMIN)
    created = call("POST", f"/v1/tenants/{tenant['id']}/keys", json={}, headers=ADMIN).json()
    call("GET", f"/v1/tenants/{tenant['id']}/keys", headers=ADMIN)
    call("DELETE", f"/v1/tenants/{tenant['id']}/keys/{created['id']}", headers=ADMIN)
    call("GET", "/v1/tenants/ten_missing", headers=ADMIN)  # 404
    call("GET", "/v1/tenants", headers=key)  # 401: a tenant key is no admin token
    call("GET", "/health")
    call("GET", "/metrics", headers=ADMIN)
    codes = {status for _, status in statuses}
    assert {200, 201, 204, 401, 404, 409, 413, 422} <= codes, statuses
