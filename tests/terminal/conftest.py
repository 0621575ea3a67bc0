"""A live server (uvicorn in a thread) with a tenant and its key, for the client and the CLI."""

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
class Server:
    url: str
    key: str
    tenant_id: str
    settings: Settings

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.key}

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", headers=self.headers, timeout=10)


@pytest.fixture
def token_delay_ms() -> int:
    """Milliseconds between the demo provider's words; modules that need time override it."""
    return 5


@pytest.fixture
def server(tmp_path: Path, nats_url: str, token_delay_ms: int) -> Iterator[Server]:
    settings = make_settings(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'kgents.db'}",
        nats_url,
        demo_token_delay_ms=token_delay_ms,
        turn_lease_seconds=2,
    )
    with server_in_thread(settings) as url:
        tenant = httpx.post(
            f"{url}/v1/tenants", json={"name": "acme", "plan": "pro"}, headers=ADMIN, timeout=10
        )
        tenant_id = tenant.json()["id"]
        key = httpx.post(f"{url}/v1/tenants/{tenant_id}/keys", json={}, headers=ADMIN, timeout=10)
        yield Server(url=url, key=key.json()["key"], tenant_id=tenant_id, settings=settings)
