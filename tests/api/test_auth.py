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
