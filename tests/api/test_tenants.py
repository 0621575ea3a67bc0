"""Admin API: tenants and API keys."""

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import Api

pytestmark = pytest.mark.anyio


def assert_utc(value: str) -> None:
    assert value.endswith(("Z", "+00:00")), value
    assert datetime.fromisoformat(value).utcoffset() == timedelta(0)


async def test_create_get_list_update_tenant(api: Api) -> None:
    created = await api.client.post(
        "/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=api.admin
    )
    assert created.status_code == 201
    tenant = created.json()
    assert tenant["name"] == "acme" and tenant["plan"] == "pro" and tenant["status"] == "active"
    assert_utc(tenant["created_at"])

    fetched = await api.client.get(f"/v1/tenants/{tenant['id']}", headers=api.admin)
    assert fetched.json() == tenant

    listed = await api.client.get("/v1/tenants", headers=api.admin)
    assert listed.json()["total"] == 1 and listed.json()["tenants"] == [tenant]

    patched = await api.client.patch(
        f"/v1/tenants/{tenant['id']}",
        json={"plan": "enterprise", "status": "suspended"},
        headers=api.admin,
    )
    assert patched.status_code == 200
    assert patched.json()["plan"] == "enterprise" and patched.json()["status"] == "suspended"


async def test_admin_api_requires_the_admin_token(api: Api) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        response = await api.client.get("/v1/tenants", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    _, key = await api.tenant_with_key()
    response = await api.client.get("/v1/tenants", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 403  # a tenant's key: known caller, not their route


async def test_unknown_plan_and_bad_bodies_change_nothing(api: Api) -> None:
    bad_bodies = [
        {"name": "x", "plan": "platinum"},
        {"name": ""},
        {"name": 42},
        {"name": "x", "unexpected": True},
        {"name": "x" * 201},
        [],
    ]
    for body in bad_bodies:
        response = await api.client.post("/v1/tenants", json=body, headers=api.admin)
        assert response.status_code == 422, body
        assert set(response.json()["error"]) == {"code", "message"}
    response = await api.client.post(
        "/v1/tenants",
        content=b"{not json",
        headers={**api.admin, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert (await api.client.get("/v1/tenants", headers=api.admin)).json()["total"] == 0


async def test_missing_tenant_is_404(api: Api) -> None:
    for tenant_id in ("ten_missing", "a.b", "x" * 300):
        response = await api.client.get(f"/v1/tenants/{tenant_id}", headers=api.admin)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    response = await api.client.patch(
        "/v1/tenants/ten_missing", json={"plan": "pro"}, headers=api.admin
    )
    assert response.status_code == 404


async def test_keys_are_shown_once_and_never_listed(api: Api) -> None:
    tenant_id, key = await api.tenant_with_key()
    assert key.startswith("kg_live_") and len(key) == len("kg_live_") + 32
    listed = await api.client.get(f"/v1/tenants/{tenant_id}/keys", headers=api.admin)
    assert listed.status_code == 200
    [public] = listed.json()["keys"]
    assert "key" not in public and key not in listed.text
    assert key.startswith(public["prefix"]) and len(public["prefix"]) < 16
    assert public["revoked_at"] is None and public["last_used_at"] is None


async def test_key_with_expiry_and_scopes(api: Api) -> None:
    tenant_id, _ = await api.tenant_with_key()
    expires = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    created = await api.client.post(
        f"/v1/tenants/{tenant_id}/keys",
        json={"name": "ci", "scopes": ["sessions"], "expires_at": expires},
        headers=api.admin,
    )
    assert created.status_code == 201
    assert created.json()["scopes"] == ["sessions"]
    assert_utc(created.json()["expires_at"])
    for bad in ("2020-01-01T00:00:00Z", "2030-01-01T00:00:00", "tomorrow"):
        response = await api.client.post(
            f"/v1/tenants/{tenant_id}/keys", json={"expires_at": bad}, headers=api.admin
        )
        assert response.status_code == 422, bad


async def test_revoke_key(api: Api) -> None:
    tenant_id, key = await api.tenant_with_key()
    [public] = (await api.client.get(f"/v1/tenants/{tenant_id}/keys", headers=api.admin)).json()[
        "keys"
    ]
    other_tenant, _ = await api.tenant_with_key(name="other")
    wrong_tenant = await api.client.delete(
        f"/v1/tenants/{other_tenant}/keys/{public['id']}", headers=api.admin
    )
    assert wrong_tenant.status_code == 404

    revoked = await api.client.delete(
        f"/v1/tenants/{tenant_id}/keys/{public['id']}", headers=api.admin
    )
    assert revoked.status_code == 200
    assert_utc(revoked.json()["revoked_at"])
    response = await api.client.get(
        "/v1/kgent/sessions", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "API key revoked"
