"""An answered request is metered: when its ``api.request`` cannot be stored, the answer is
``503 database_unavailable`` instead of the route's own."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import select, text

from kgents.platform import Platform
from kgents.store.schema import OutboxRow
from tests.conftest import Api

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def outbox_away(platform: Platform) -> AsyncIterator[None]:
    """The outbox table renamed for the block: every write to it fails, on either database."""
    async with platform.engine.begin() as connection:
        await connection.execute(text("ALTER TABLE usage_outbox RENAME TO usage_outbox_away"))
    try:
        yield
    finally:
        async with platform.engine.begin() as connection:
            await connection.execute(text("ALTER TABLE usage_outbox_away RENAME TO usage_outbox"))


async def test_a_request_whose_usage_cannot_be_stored_is_a_503(api: Api) -> None:
    tenant_id, key = await api.tenant_with_key()
    headers = {"X-API-Key": key}
    session = (await api.client.post("/v1/kgent/sessions", json={}, headers=headers)).json()
    platform: Platform = api.app.state.platform
    async with outbox_away(platform):
        for path in (
            "/v1/kgent/sessions",
            f"/v1/kgent/sessions/{session['id']}",
            f"/v1/kgent/sessions/{session['id']}/events",  # a stream: never starts
        ):
            response = await api.client.get(path, headers=headers)
            assert response.status_code == 503, (path, response.text)
            assert response.json()["error"]["code"] == "database_unavailable"
            assert response.headers["Retry-After"] == "1"
        problem = await api.client.get("/api/v1/meters", headers=headers)
        assert problem.status_code == 503
        assert problem.headers["content-type"].startswith("application/problem+json")
    assert api.app.state.generation.events.hub.followers == 0
    listed = await api.client.get("/v1/kgent/sessions", headers=headers)
    assert listed.status_code == 200
    async with platform.engine.connect() as connection:
        rows = await connection.execute(
            select(OutboxRow.data).where(
                OutboxRow.type == "api.request", OutboxRow.subject == tenant_id
            )
        )
        metered = [data for (data,) in rows]
    # The session's creation and the listing after the outage: nothing for the 503s.
    assert [(d["endpoint"], d["status_code"]) for d in metered] == [
        ("/v1/kgent/sessions", 201),
        ("/v1/kgent/sessions", 200),
    ]
