"""A live server (uvicorn in a thread) with a tenant, a key and a client, for SSE tests."""

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from kgents.config import Settings
from tests.conftest import ADMIN_TOKEN, fresh_database, make_settings
from tests.support.servers import server_in_thread

TOKEN_DELAY_MS = 40
BOTH_DATABASES = ["sqlite", "postgresql"]


@dataclass
class Live:
    base_url: str
    client: httpx.AsyncClient
    key: str
    settings: Settings

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    async def new_session(self) -> str:
        response = await self.client.post("/v1/kgent/sessions", json={}, headers=self.headers)
        assert response.status_code == 201, response.text
        session_id: str = response.json()["id"]
        return session_id


def settings_for_live(
    tmp_path: Path, nats_url: str, database_url: str, **overrides: Any
) -> Settings:
    """Settings of a live server; a module overrides ``live_settings`` with other values."""
    values: dict[str, Any] = {"demo_token_delay_ms": TOKEN_DELAY_MS, "turn_lease_seconds": 2}
    values.update(overrides)
    return make_settings(tmp_path / "data", database_url, nats_url, **values)


@pytest.fixture
async def live_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The live server's database: SQLite, or either with
    ``@pytest.mark.parametrize("live_database", BOTH_DATABASES, indirect=True)``."""
    async with fresh_database(getattr(request, "param", "sqlite"), request, tmp_path) as url:
        yield url


@pytest.fixture
def live_settings(tmp_path: Path, nats_url: str, live_database: str) -> Settings:
    return settings_for_live(tmp_path, nats_url, live_database)


@pytest.fixture
def live_url(live_settings: Settings) -> Iterator[str]:
    with server_in_thread(live_settings) as base_url:
        yield base_url


@pytest.fixture
async def live(live_url: str, live_settings: Settings) -> AsyncIterator[Live]:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=live_url, timeout=30) as client:
        tenant = await client.post(
            "/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=admin
        )
        key = await client.post(f"/v1/tenants/{tenant.json()['id']}/keys", json={}, headers=admin)
        yield Live(base_url=live_url, client=client, key=key.json()["key"], settings=live_settings)
