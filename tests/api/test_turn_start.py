"""Starting a turn is one transaction (rate count, checks, rows, usage events); API key lookups
are cached in-process for a few seconds, and cleared by changes made in the process."""

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from kgents.clock import utc_now
from kgents.config import Budget, PlanConfig, Settings
from kgents.errors import TurnInProgress, Unauthenticated
from kgents.metering import events as usage_events
from kgents.platform import Platform
from kgents.records import ApiKey, Tenant
from kgents.sessions.service import TurnRequest
from kgents.store.limits_schema import RateWindowRow
from kgents.store.schema import MessageRow, OutboxRow, SessionRow, TurnRow
from kgents.store.tenancy_repo import SqlTenancyStore
from kgents.tenancy.key_cache import KeyCache
from kgents.tenancy.rate_limit import RateCharge
from kgents.tenancy.service import TenancyService
from tests.conftest import Api, make_settings

pytestmark = pytest.mark.anyio

MESSAGES = "/v1/kgent/sessions/{session_id}/messages"
PLANS = {
    "tiny": PlanConfig(tokens_per_month=None, requests_per_minute=3, max_budget=Budget.dialogue),
    "pro": PlanConfig(tokens_per_month=100_000, requests_per_minute=600, max_budget=Budget.deep),
}


@pytest.fixture
def settings(tmp_path: Path, database_url: str, nats_url: str) -> Settings:
    return make_settings(tmp_path / "data", database_url, nats_url, plans=PLANS)


def platform_of(api: Api) -> Platform:
    platform: Platform = api.app.state.platform
    return platform


async def scalar(api: Api, statement: Any) -> Any:
    async with platform_of(api).engine.connect() as connection:
        return await connection.scalar(statement)


async def new_session(api: Api, key: str) -> str:
    response = await api.client.post("/v1/kgent/sessions", json={}, headers={"X-API-Key": key})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_a_streamed_turn_stores_its_api_request_with_the_turn(api: Api) -> None:
    tenant_id, key = await api.tenant_with_key()
    session_id = await new_session(api, key)
    response = await api.client.post(
        MESSAGES.format(session_id=session_id),
        json={"message": "hello", "stream": True},
        headers={"X-API-Key": key},
    )
    assert response.status_code == 200
    assert "event: complete" in response.text
    assert response.headers["X-RateLimit-Limit"] == "600"
    assert response.headers["X-RateLimit-Remaining"] == "598"  # the session, then the turn
    rows = await _all(
        api,
        select(OutboxRow.data).where(
            OutboxRow.type == "api.request", OutboxRow.subject == tenant_id
        ),
    )
    turn_requests = [data for (data,) in rows if data["endpoint"] == MESSAGES]
    assert turn_requests == [{"endpoint": MESSAGES, "method": "POST", "status_code": 200}]


async def _all(api: Api, statement: Any) -> list[Any]:
    async with platform_of(api).engine.connect() as connection:
        return list((await connection.execute(statement)).all())


async def test_a_refused_turn_counts_against_the_rate_limit_and_stores_nothing_else(
    api: Api,
) -> None:
    tenant_id, key = await api.tenant_with_key(plan="tiny")
    headers = {"X-API-Key": key}
    remaining = []
    for _ in range(3):
        response = await api.client.post(
            MESSAGES.format(session_id="ses_missing"),
            json={"message": "hi", "stream": True},
            headers=headers,
        )
        assert response.status_code == 404
        remaining.append(response.headers["X-RateLimit-Remaining"])
    assert remaining == ["2", "1", "0"]
    limited = await api.client.post(
        MESSAGES.format(session_id="ses_missing"), json={"message": "hi"}, headers=headers
    )
    assert limited.status_code == 429
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert await scalar(api, select(func.count()).select_from(TurnRow)) == 0
    assert await scalar(api, select(func.count()).select_from(MessageRow)) == 0
    # The refusals are metered by the middleware, one api.request each, with their status.
    statuses = sorted(
        data["status_code"]
        for (data,) in await _all(
            api,
            select(OutboxRow.data).where(
                OutboxRow.type == "api.request", OutboxRow.subject == tenant_id
            ),
        )
        if data["endpoint"] == MESSAGES
    )
    assert statuses == [404, 404, 404, 429]


async def test_the_turn_start_commits_all_or_nothing(api: Api) -> None:
    """A failure while storing the turn rolls back the request's count, the user message,
    the turn and its usage events together."""
    platform = platform_of(api)
    tenant_id, key = await api.tenant_with_key()
    session_id = await new_session(api, key)
    principal = await platform.tenancy.authenticate(key)
    # An event already in the outbox: storing it again with the turn violates its key.
    stored = usage_events.api_request(
        tenant_id=tenant_id, endpoint=MESSAGES, method="POST", status_code=200, at=utc_now()
    )
    await platform.outbox.add([stored], at=utc_now())
    count_before = await scalar(api, select(func.coalesce(func.sum(RateWindowRow.count), 0)))
    outbox_before = await scalar(api, select(func.count()).select_from(OutboxRow))
    with pytest.raises(IntegrityError):
        await platform.sessions.start_turn(
            principal=principal,
            session_id=session_id,
            request=TurnRequest(message="hi", mode=None, budget=Budget.dialogue),
            rate=RateCharge(key_id=principal.key.id, limit=600),
            request_events=[stored],
        )
    assert await scalar(api, select(func.coalesce(func.sum(RateWindowRow.count), 0))) == (
        count_before
    )
    assert await scalar(api, select(func.count()).select_from(OutboxRow)) == outbox_before
    assert await scalar(api, select(func.count()).select_from(TurnRow)) == 0
    assert await scalar(api, select(func.count()).select_from(MessageRow)) == 0
    assert await scalar(api, select(SessionRow.message_count)) == 0
    # And the session is free: the next turn starts.
    planned, _ = await platform.sessions.start_turn(
        principal=principal,
        session_id=session_id,
        request=TurnRequest(message="hi", mode=None, budget=Budget.dormant),
        rate=RateCharge(key_id=principal.key.id, limit=600),
    )
    assert planned.turn.status == "running"
    assert await scalar(api, select(func.count()).select_from(TurnRow)) == 1


async def test_a_second_turn_in_a_session_is_refused_by_its_insert_and_still_counted(
    api: Api,
) -> None:
    """No read says a turn is running: the turn's own insert finds out, and the transaction
    then commits the request's count and nothing else."""
    platform = platform_of(api)
    tenant_id, key = await api.tenant_with_key()
    session_id = await new_session(api, key)
    principal = await platform.tenancy.authenticate(key)

    async def start() -> Any:
        return await platform.sessions.start_turn(
            principal=principal,
            session_id=session_id,
            request=TurnRequest(message="hi", mode=None, budget=Budget.dormant),
            rate=RateCharge(key_id=principal.key.id, limit=600),
            request_events=[
                usage_events.api_request(
                    tenant_id=tenant_id,
                    endpoint=MESSAGES,
                    method="POST",
                    status_code=200,
                    at=utc_now(),
                )
            ],
        )

    planned, question = await start()  # stays running: no generation was launched
    count = await scalar(api, select(func.sum(RateWindowRow.count)))
    outbox = await scalar(api, select(func.count()).select_from(OutboxRow))
    with pytest.raises(TurnInProgress):
        await start()
    assert await scalar(api, select(func.sum(RateWindowRow.count))) == count + 1
    assert await scalar(api, select(func.count()).select_from(OutboxRow)) == outbox
    assert await scalar(api, select(func.count()).select_from(TurnRow)) == 1
    assert await scalar(api, select(MessageRow.id)) == question.id
    assert await scalar(api, select(SessionRow.message_count)) == 1
    stored = await platform.sessions.get_turn(tenant_id=tenant_id, turn_id=planned.turn.id)
    assert (
        stored.started_at == planned.turn.started_at and stored.started_at.utcoffset() is not None
    )


async def test_the_key_cache_honours_a_revoke_and_a_suspension_made_in_this_process(
    api: Api,
) -> None:
    tenant_id, key = await api.tenant_with_key()
    headers = {"X-API-Key": key}
    assert (await api.client.get("/v1/kgent/sessions", headers=headers)).status_code == 200
    [public] = (await api.client.get(f"/v1/tenants/{tenant_id}/keys", headers=api.admin)).json()[
        "keys"
    ]
    revoked = await api.client.delete(
        f"/v1/tenants/{tenant_id}/keys/{public['id']}", headers=api.admin
    )
    assert revoked.status_code == 200
    refused = await api.client.get("/v1/kgent/sessions", headers=headers)
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "API key revoked"

    other = await api.client.post(f"/v1/tenants/{tenant_id}/keys", json={}, headers=api.admin)
    headers = {"X-API-Key": other.json()["key"]}
    assert (await api.client.get("/v1/kgent/sessions", headers=headers)).status_code == 200
    await api.client.patch(
        f"/v1/tenants/{tenant_id}", json={"status": "suspended"}, headers=api.admin
    )
    suspended = await api.client.get("/v1/kgent/sessions", headers=headers)
    assert suspended.status_code == 403


async def test_a_revoke_by_another_process_is_seen_within_the_cache_ttl(api: Api) -> None:
    platform = platform_of(api)
    now = [100.0]
    here = TenancyService(
        store=SqlTenancyStore(platform.engine),
        plans=PLANS,
        key_cache=KeyCache(ttl_seconds=5, clock=lambda: now[0]),
    )
    elsewhere = platform.tenancy  # another replica: its own service and cache
    tenant_id, key = await api.tenant_with_key()
    assert (await here.authenticate(key)).tenant.id == tenant_id
    [listed] = await elsewhere.list_api_keys(tenant_id=tenant_id)
    await elsewhere.revoke_api_key(key_id=listed.id)
    now[0] += 4.9
    assert (await here.authenticate(key)).key.id == listed.id  # trusted for the TTL
    now[0] += 0.1
    with pytest.raises(Unauthenticated, match="revoked"):
        await here.authenticate(key)


def test_the_key_cache_is_bounded_and_can_be_off() -> None:
    at = utc_now()
    tenant = Tenant(id="ten_a", name="a", plan="pro", status="active", created_at=at)

    def key(index: int) -> ApiKey:
        return ApiKey(
            id=f"key_{index}",
            tenant_id="ten_a",
            name="k",
            prefix="kg_live_abcd",
            scopes=("sessions",),
            created_at=at,
            last_used_at=None,
            expires_at=None,
            revoked_at=None,
        )

    cache = KeyCache(ttl_seconds=5, max_entries=10)
    for index in range(25):
        cache.put(f"hash{index}", key(index), tenant)
        assert len(cache) <= 10
    assert cache.get("hash24") is not None and cache.get("hash0") is None
    off = KeyCache(ttl_seconds=0)
    off.put("hash", key(1), tenant)
    assert off.get("hash") is None and len(off) == 0
