"""Tenant API keys: every way a key can be wrong is a 401 with the error body."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from kgents.store.schema import ApiKeyRow
from tests.conftest import Api

pytestmark = pytest.mark.anyio


async def test_both_header_forms_authenticate(api: Api) -> None:
    _, key = await api.tenant_with_key()
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        response = await api.client.get("/v1/kgent/sessions", headers=headers)
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer kg_live_short"},
        {"Authorization": "Bearer kg_live_" + "A" * 32},
        {"X-API-Key": "not-a-key"},
        {"Authorization": "Token kg_live_" + "A" * 32},
    ],
)
async def test_missing_or_invalid_keys_are_401(api: Api, headers: dict[str, str]) -> None:
    response = await api.client.get("/v1/kgent/sessions", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_expired_key_is_401(api: Api) -> None:
    _, key = await api.tenant_with_key()
    engine = api.app.state.platform.engine
    async with engine.begin() as connection:
        await connection.execute(
            update(ApiKeyRow).values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    response = await api.client.get("/v1/kgent/sessions", headers={"X-API-Key": key})
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "API key expired"


async def test_suspended_tenant_is_403(api: Api) -> None:
    tenant_id, key = await api.tenant_with_key()
    await api.client.patch(
        f"/v1/tenants/{tenant_id}", json={"status": "suspended"}, headers=api.admin
    )
    response = await api.client.get("/v1/kgent/sessions", headers={"X-API-Key": key})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tenant_suspended"


async def test_last_used_at_is_recorded(api: Api) -> None:
    tenant_id, key = await api.tenant_with_key()
    await api.client.get("/v1/kgent/sessions", headers={"X-API-Key": key})
    [public] = (await api.client.get(f"/v1/tenants/{tenant_id}/keys", headers=api.admin)).json()[
        "keys"
    ]
    assert public["last_used_at"] is not None


async def test_two_different_keys_in_one_request_are_400(api: Api) -> None:
    tenant_id, key = await api.tenant_with_key()
    other = await api.client.post(f"/v1/tenants/{tenant_id}/keys", json={}, headers=api.admin)
    both = {"Authorization": f"Bearer {key}", "X-API-Key": other.json()["key"]}
    response = await api.client.get("/v1/kgent/sessions", headers=both)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "conflicting_api_keys"
    same = {"Authorization": f"Bearer {key}", "X-API-Key": key}
    assert (await api.client.get("/v1/kgent/sessions", headers=same)).status_code == 200


async def key_with_scopes(api: Api, tenant_id: str, scopes: list[str]) -> str:
    response = await api.client.post(
        f"/v1/tenants/{tenant_id}/keys", json={"scopes": scopes}, headers=api.admin
    )
    assert response.status_code == 201, response.text
    assert response.json()["scopes"] == scopes
    key: str = response.json()["key"]
    return key


async def test_unknown_scopes_are_refused(api: Api) -> None:
    tenant_id, _ = await api.tenant_with_key()
    for scopes in (["sessions", "admin"], ["*"]):
        response = await api.client.post(
            f"/v1/tenants/{tenant_id}/keys", json={"scopes": scopes}, headers=api.admin
        )
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == "validation_error"
    listed = await api.client.get(f"/v1/tenants/{tenant_id}/keys", headers=api.admin)
    assert len(listed.json()["keys"]) == 1  # nothing was created
    default = await api.client.post(f"/v1/tenants/{tenant_id}/keys", json={}, headers=api.admin)
    assert default.json()["scopes"] == ["sessions", "usage"]


async def test_each_scope_is_enforced_on_its_routes(api: Api) -> None:
    tenant_id, full_key = await api.tenant_with_key()
    usage_only = {"X-API-Key": await key_with_scopes(api, tenant_id, ["usage"])}
    sessions_only = {"X-API-Key": await key_with_scopes(api, tenant_id, ["sessions"])}
    session = await api.client.post("/v1/kgent/sessions", json={}, headers={"X-API-Key": full_key})
    session_id = session.json()["id"]
    sessions_routes = [
        ("GET", "/v1/kgent/sessions", None),
        ("POST", "/v1/kgent/sessions", {}),
        ("GET", f"/v1/kgent/sessions/{session_id}", None),
        ("GET", f"/v1/kgent/sessions/{session_id}/messages", None),
        ("POST", f"/v1/kgent/sessions/{session_id}/messages", {"message": "hi"}),
        ("GET", f"/v1/kgent/sessions/{session_id}/events", None),
        ("POST", f"/v1/kgent/sessions/{session_id}/cancel", None),
        ("DELETE", f"/v1/kgent/sessions/{session_id}", None),
        ("GET", "/v1/kgent/budgets", None),
    ]
    for method, path, body in sessions_routes:
        response = await api.client.request(method, path, json=body, headers=usage_only)
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["error"]["code"] == "scope_missing"
    for path in ("/v1/usage", "/api/v1/meters", "/api/v1/meters/api_requests/query"):
        refused = await api.client.get(path, headers=sessions_only)
        assert refused.status_code == 403, (path, refused.text)
        assert (await api.client.get(path, headers=usage_only)).status_code == 200, path
    assert (await api.client.get("/v1/kgent/sessions", headers=sessions_only)).status_code == 200
    stored = await api.client.get(f"/v1/kgent/sessions/{session_id}", headers=sessions_only)
    assert stored.status_code == 200  # nothing was done by the refused requests
