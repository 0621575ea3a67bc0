"""Plan limits: requests per minute per key (shared across replicas) and tokens per month."""

from pathlib import Path

import httpx
import pytest

from kgents.api.app import create_app
from kgents.config import Budget, PlanConfig, Settings
from tests.conftest import Api, make_settings

pytestmark = pytest.mark.anyio

TINY = {
    "tiny": PlanConfig(tokens_per_month=150, requests_per_minute=5, max_budget=Budget.dialogue),
    "small": PlanConfig(tokens_per_month=150, requests_per_minute=1000, max_budget=Budget.dialogue),
    "pro": PlanConfig(
        tokens_per_month=100_000, requests_per_minute=600, max_budget=Budget.dialogue
    ),
}


@pytest.fixture
def settings(tmp_path: Path, database_url: str, nats_url: str) -> Settings:
    return make_settings(tmp_path / "data", database_url, nats_url, plans=TINY)


async def test_rate_limit_per_key_with_headers(api: Api) -> None:
    _, key = await api.tenant_with_key(plan="tiny")
    headers = {"X-API-Key": key}
    remaining = []
    for _ in range(5):
        response = await api.client.get("/v1/kgent/sessions", headers=headers)
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "5"
        remaining.append(int(response.headers["X-RateLimit-Remaining"]))
        assert int(response.headers["X-RateLimit-Reset"]) > 0
    assert remaining == [4, 3, 2, 1, 0]
    limited = await api.client.get("/v1/kgent/sessions", headers=headers)
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    # Another key of the same tenant has its own budget.
    tenant_id = (await api.client.get("/v1/tenants", headers=api.admin)).json()["tenants"][0]["id"]
    other = await api.client.post(f"/v1/tenants/{tenant_id}/keys", json={}, headers=api.admin)
    fresh = await api.client.get("/v1/kgent/sessions", headers={"X-API-Key": other.json()["key"]})
    assert fresh.status_code == 200


async def test_rate_limit_holds_across_replicas(api: Api, settings: Settings) -> None:
    _, key = await api.tenant_with_key(plan="tiny")
    second = create_app(settings)
    async with second.router.lifespan_context(second):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=second), base_url="http://replica-2"
        ) as replica:
            statuses = []
            for client in [api.client, replica] * 4:
                response = await client.get("/v1/kgent/sessions", headers={"X-API-Key": key})
                statuses.append(response.status_code)
    assert statuses.count(200) == 5 and statuses.count(429) == 3


async def test_token_quota_returns_402_once_used_up(api: Api) -> None:
    _, key = await api.tenant_with_key(plan="small")
    headers = {"X-API-Key": key}
    session = (await api.client.post("/v1/kgent/sessions", json={}, headers=headers)).json()
    path = f"/v1/kgent/sessions/{session['id']}/messages"
    used = 0
    statuses = []
    for _ in range(4):
        response = await api.client.post(
            path, json={"message": "hi", "stream": False}, headers=headers
        )
        statuses.append(response.status_code)
        if response.status_code == 201:
            used += response.json()["tokens_in"] + response.json()["tokens_out"]
    assert statuses[0] == 201 and statuses[-1] == 402
    refused = await api.client.post(path, json={"message": "hi", "stream": False}, headers=headers)
    assert refused.json()["error"]["code"] == "quota_exceeded"
    # The overshoot is bounded by the one turn that started below the limit.
    assert 150 <= used < 150 + 300
    # A dormant turn makes no model call, but its message is stored: refused as well.
    dormant = await api.client.post(
        path, json={"message": "hi", "stream": False, "budget": "dormant"}, headers=headers
    )
    assert dormant.status_code == 402


async def test_dormant_turns_count_their_stored_message_against_the_quota(api: Api) -> None:
    """No model call, but the message is stored in the database and the event stream: its
    estimated tokens (four characters a token) are input tokens against the plan's quota."""
    _, key = await api.tenant_with_key(plan="small")  # 150 tokens a month
    headers = {"X-API-Key": key}
    session = (await api.client.post("/v1/kgent/sessions", json={}, headers=headers)).json()
    path = f"/v1/kgent/sessions/{session['id']}/messages"
    statuses = []
    for _ in range(3):
        response = await api.client.post(
            path, json={"message": "x" * 400, "stream": False, "budget": "dormant"}, headers=headers
        )
        statuses.append(response.status_code)
        if response.status_code == 201:
            assert response.json()["tokens_in"] == 100
    assert statuses == [201, 201, 402]
    quota = (await api.client.get("/v1/usage", headers=headers)).json()["quota"]
    assert quota["used"] == 200
