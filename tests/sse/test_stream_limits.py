"""Caps on open streams: a key and a tenant hold at most their plan's number of SSE followers
and streamed replies at once (429 ``too_many_streams``), and a stream that ends frees its slot."""

import contextlib
from pathlib import Path

import httpx
import pytest

from kgents.config import Budget, PlanConfig, Settings
from tests.conftest import ADMIN_TOKEN, make_settings
from tests.sse.conftest import TOKEN_DELAY_MS, Live
from tests.support.sse import read_events
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def live_settings(tmp_path: Path, nats_url: str) -> Settings:
    capped = PlanConfig(
        tokens_per_month=None,
        requests_per_minute=1000,
        max_budget=Budget.dialogue,
        streams_per_key=2,
        streams_per_tenant=3,
    )
    return make_settings(
        tmp_path / "data",
        f"sqlite:///{tmp_path / 'kgents.db'}",
        nats_url,
        demo_token_delay_ms=TOKEN_DELAY_MS,
        plans={"pro": capped},
    )


async def new_key(client: httpx.AsyncClient, tenant_id: str) -> dict[str, str]:
    key = await client.post(f"/v1/tenants/{tenant_id}/keys", json={}, headers=ADMIN)
    assert key.status_code == 201, key.text
    return {"X-API-Key": key.json()["key"]}


async def test_streams_are_capped_per_key_and_per_tenant(live: Live) -> None:
    client = live.client
    tenant_id = (await client.get("/v1/tenants", headers=ADMIN)).json()["tenants"][0]["id"]
    first, second = live.headers, await new_key(client, tenant_id)
    session_id = await live.new_session()
    events = f"/v1/kgent/sessions/{session_id}/events"
    messages = f"/v1/kgent/sessions/{session_id}/messages"

    async with contextlib.AsyncExitStack() as stack:

        async def opened(method: str, url: str, headers: dict[str, str], **kw: object) -> int:
            response = await stack.enter_async_context(
                client.stream(method, url, headers=headers, **kw)  # type: ignore[arg-type]
            )
            if response.status_code != 200:
                body = (await response.aread()).decode()
                assert response.json()["error"]["code"] == "too_many_streams", body
            return response.status_code

        reply = await stack.enter_async_context(
            client.stream("POST", messages, json={"message": "hello"}, headers=first)
        )
        assert reply.status_code == 200
        assert await opened("GET", events, first) == 200  # the key's second stream
        assert await opened("GET", events, first) == 429  # per key: 2
        refused = await opened("POST", messages, first, json={"message": "no slot left"})
        assert refused == 429
        assert await opened("GET", events, second) == 200  # the tenant's third
        assert await opened("GET", events, second) == 429  # per tenant: 3

        # Another tenant is not affected.
        other = await client.post(
            "/v1/tenants", json={"name": "other", "plan": "pro"}, headers=ADMIN
        )
        other_key = await new_key(client, other.json()["id"])
        own = await client.post("/v1/kgent/sessions", json={}, headers=other_key)
        assert (
            await opened("GET", f"/v1/kgent/sessions/{own.json()['id']}/events", other_key) == 200
        )

        # The streamed reply ends with its turn, and its slot is free again.
        async for event in read_events(reply):
            if event.event in ("complete", "error"):
                break

        async def slot_free() -> bool:
            return await opened("GET", events, second) == 200

        await eventually(slot_free, seconds=15)

    history = await client.get(messages, headers=first)
    assert history.json()["total"] == 2  # the refused reply stored nothing
