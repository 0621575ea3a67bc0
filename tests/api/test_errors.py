"""One error body everywhere: validation, unknown routes, huge bodies, long messages."""

import os
from collections.abc import AsyncIterator

import pytest

from tests.conftest import Api
from tests.openmeter.contract import assert_problem

pytestmark = pytest.mark.anyio


async def test_unknown_route_and_method(api: Api) -> None:
    response = await api.client.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = await api.client.put("/v1/tenants", headers=api.admin)
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


async def test_huge_body_is_413_and_stores_nothing(api: Api) -> None:
    _, key = await api.tenant_with_key()
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    huge = b'{"title": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    response = await api.client.post("/v1/kgent/sessions", content=huge, headers=headers)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "payload_too_large"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds too
        yield b'{"title": "'
        for _ in range(40):
            yield b"y" * 65536
        yield b'"}'

    response = await api.client.post("/v1/kgent/sessions", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
    listed = await api.client.get("/v1/kgent/sessions", headers={"X-API-Key": key})
    assert listed.json()["total"] == 0


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/meters/llm_tokens_in/query"])
async def test_huge_body_under_api_v1_is_a_413_problem(api: Api, path: str) -> None:
    """The OpenMeter-compatible surface answers the body limit as problem details too."""
    headers = {**api.admin, "Content-Type": "application/json"}
    huge = b'{"subject": ["' + b"x" * (2 * 1024 * 1024) + b'"]}'

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: read up to the limit
        yield huge[: len(huge) // 2]
        yield huge[len(huge) // 2 :]

    for content in (huge, chunks()):
        response = await api.client.post(path, content=content, headers=headers)
        body = assert_problem(response, 413, code="payload_too_large")
        assert body["title"] == "Request Entity Too Large"
        assert "larger than" in body["detail"]


async def test_message_limits_and_wrong_types(api: Api) -> None:
    _, key = await api.tenant_with_key()
    headers = {"X-API-Key": key}
    session = (await api.client.post("/v1/kgent/sessions", json={}, headers=headers)).json()
    path = f"/v1/kgent/sessions/{session['id']}/messages"
    bad_bodies = [
        {"message": "x" * 32_001, "stream": False},
        {"message": "", "stream": False},
        {"message": 12, "stream": False},
        {"message": "hi", "mode": "shout", "stream": False},
        {"message": "hi", "budget": "infinite", "stream": False},
        {"message": "hi", "stream": "maybe"},
        {"stream": False},
    ]
    for body in bad_bodies:
        response = await api.client.post(path, json=body, headers=headers)
        assert response.status_code == 422, (body, response.text)
        assert set(response.json()["error"]) == {"code", "message"}
    ok = await api.client.post(
        path, json={"message": "x" * 32_000, "stream": False}, headers=headers
    )
    assert ok.status_code == 201
    messages = (await api.client.get(path, headers=headers)).json()
    assert messages["total"] == 2


async def test_bad_pagination_is_422(api: Api) -> None:
    _, key = await api.tenant_with_key()
    for query in ("limit=0", "limit=1000", "offset=-1", "limit=abc"):
        response = await api.client.get(f"/v1/kgent/sessions?{query}", headers={"X-API-Key": key})
        assert response.status_code == 422, query


async def test_health(api: Api) -> None:
    response = await api.client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["components"] == {"database": "ok", "llm": "ok", "nats": "ok"}
    assert body["reasons"] == {}
    assert response.headers["x-kgents-worker"] == str(os.getpid())
    ready = await api.client.get("/health/ready")
    assert ready.status_code == 200 and ready.json() == body
    live = await api.client.get("/health/live")
    assert live.status_code == 200 and live.json()["status"] == "ok"


async def test_offsets_beyond_64_bits_are_4xx_on_every_listing(api: Api) -> None:
    """At and above 2^63 neither database can hold the offset: refused before it gets there."""
    _, key = await api.tenant_with_key()
    tenant_headers = {"X-API-Key": key}
    session = (await api.client.post("/v1/kgent/sessions", json={}, headers=tenant_headers)).json()
    listings = [
        ("/v1/kgent/sessions", tenant_headers, "offset"),
        (f"/v1/kgent/sessions/{session['id']}/messages", tenant_headers, "offset"),
        ("/v1/tenants", api.admin, "offset"),
        ("/api/v1/meters", api.admin, "page"),
    ]
    for path, headers, name in listings:
        for value in (2**63, 136809553767992934400, 2**64 - 1):
            response = await api.client.get(path, params={name: value}, headers=headers)
            assert 400 <= response.status_code < 500, (path, value, response.text)
            assert response.json()["error" if path.startswith("/v1") else "code"]
        for limit in (2**63, 2**64):
            query = {"limit" if path.startswith("/v1") else "pageSize": limit}
            response = await api.client.get(path, params=query, headers=headers)
            assert 400 <= response.status_code < 500, (path, limit, response.text)


async def test_nul_and_lone_surrogates_are_422_and_store_nothing(api: Api) -> None:
    """Both databases answer alike: PostgreSQL cannot store NUL, neither can encode a lone
    surrogate; SQLite would have stored NUL."""
    _, key = await api.tenant_with_key()
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    session = (await api.client.post("/v1/kgent/sessions", json={}, headers=headers)).json()
    messages = f"/v1/kgent/sessions/{session['id']}/messages"
    bad = ("\\u0000", "a\\u0000b", "\\udfff", "x\\ud800y")
    for text in bad:
        requests = [
            ("/v1/kgent/sessions", headers, f'{{"title": "{text}"}}'),
            (messages, headers, f'{{"message": "{text}", "stream": false}}'),
            (
                "/v1/tenants",
                {**api.admin, "Content-Type": "application/json"},
                f'{{"name": "{text}"}}',
            ),
        ]
        for path, request_headers, body in requests:
            response = await api.client.post(path, content=body, headers=request_headers)
            assert response.status_code == 422, (path, body, response.text)
            assert response.json()["error"]["code"] == "validation_error"
    sessions = await api.client.get("/v1/kgent/sessions", headers=headers)
    assert sessions.json()["total"] == 1
    assert (await api.client.get(messages, headers=headers)).json()["total"] == 0
    tenants = await api.client.get("/v1/tenants", headers=api.admin)
    assert [tenant["name"] for tenant in tenants.json()["tenants"]] == ["acme"]
    # A surrogate pair (one character outside the BMP) is ordinary text.
    fine = await api.client.post(
        "/v1/kgent/sessions", content='{"title": "\\ud83d\\ude00"}', headers=headers
    )
    assert fine.status_code == 201
    assert fine.json()["title"] == "\U0001f600"


async def test_invalid_input_has_one_code(api: Api) -> None:
    """A domain check (``from``) and a schema check (``limit``) answer with the same code."""
    _, key = await api.tenant_with_key()
    headers = {"X-API-Key": key}
    session = (await api.client.post("/v1/kgent/sessions", json={}, headers=headers)).json()
    domain = await api.client.get(
        f"/v1/kgent/sessions/{session['id']}/events", params={"from": "end"}, headers=headers
    )
    schema = await api.client.get("/v1/kgent/sessions?limit=0", headers=headers)
    for response in (domain, schema):
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"


async def test_json_syntax_error_says_where(api: Api) -> None:
    _, key = await api.tenant_with_key()
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    response = await api.client.post(
        "/v1/kgent/sessions", content=b'{\n  "title": "x",\n  "mode" "advise"\n}', headers=headers
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "line 3, column 10" in error["message"], error["message"]
    assert "JSON decode error" not in error["message"]


async def test_a_body_that_is_not_json_is_415(api: Api) -> None:
    _, key = await api.tenant_with_key()
    for content_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = await api.client.post(
            "/v1/kgent/sessions",
            content=b'{"title": "x"}',
            headers={"X-API-Key": key, "Content-Type": content_type},
        )
        assert response.status_code == 415, (content_type, response.text)
        error = response.json()["error"]
        assert error["code"] == "unsupported_media_type"
        assert "application/json" in error["message"] and content_type in error["message"]
    listed = await api.client.get("/v1/kgent/sessions", headers={"X-API-Key": key})
    assert listed.json()["total"] == 0


async def test_creating_a_session_without_a_body_works_like_an_empty_object(api: Api) -> None:
    _, key = await api.tenant_with_key()
    response = await api.client.post("/v1/kgent/sessions", headers={"X-API-Key": key})
    assert response.status_code == 201, response.text
    assert response.json()["mode"] == "reflect" and response.json()["title"] is None


async def test_an_unknown_query_parameter_is_422(api: Api) -> None:
    _, key = await api.tenant_with_key()
    for path, headers in (
        ("/v1/kgent/sessions?limt=5", {"X-API-Key": key}),
        ("/v1/tenants?ofset=1", api.admin),
    ):
        response = await api.client.get(path, headers=headers)
        assert response.status_code == 422, (path, response.text)
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert "limt" in error["message"] or "ofset" in error["message"]
    known = await api.client.get("/v1/kgent/sessions?limit=5", headers={"X-API-Key": key})
    assert known.status_code == 200


async def test_a_tenant_key_on_an_admin_route_is_403_admin_only(api: Api) -> None:
    _, key = await api.tenant_with_key()
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        response = await api.client.get("/v1/tenants", headers=headers)
        assert response.status_code == 403, response.text
        assert response.json()["error"]["code"] == "admin_only"
    wrong = await api.client.get("/v1/tenants", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
