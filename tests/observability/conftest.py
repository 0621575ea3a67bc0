"""A live server (uvicorn in a thread) with a tenant and its key, for metrics and logs."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from kgents.config import Settings
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.support.servers import server_in_thread

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Live:
    url: str
    key: str
    tenant_id: str
    settings: Settings
    client: httpx.Client

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    def new_session(self) -> str:
        response = self.client.post("/v1/kgent/sessions", json={}, headers=self.headers)
        assert response.status_code == 201, response.text
        session_id: str = response.json()["id"]
        return session_id


@pytest.fixture
def live_settings(tmp_path: Path, nats_url: str) -> Settings:
    return make_settings(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'kgents.db'}",
        nats_url,
        demo_token_delay_ms=5,
        turn_lease_seconds=2,
    )


@pytest.fixture
def live(live_settings: Settings) -> Iterator[Live]:
    with (
        server_in_thread(live_settings) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        tenant = client.post("/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=ADMIN)
        tenant_id = tenant.json()["id"]
        key = client.post(f"/v1/tenants/{tenant_id}/keys", json={}, headers=ADMIN)
        yield Live(url, key.json()["key"], tenant_id, live_settings, client)
