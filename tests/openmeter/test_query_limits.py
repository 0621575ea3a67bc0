"""The work one meter query may ask for is bounded, and its CPU work leaves the event loop to
everyone else: a tenant cannot stall the others with a long range or a DST time zone."""

import asyncio
import threading
from zoneinfo import ZoneInfo

import pytest

from kgents.metering import query as query_module
from tests.conftest import Api
from tests.openmeter.contract import ContractClient, assert_problem
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

QUERY = "/api/v1/meters/api_requests/query"


async def test_queries_asking_for_too_much_work_are_refused_with_the_limit(
    contract: ContractClient, api: Api
) -> None:
    _, key = await api.tenant_with_key()
    tenant = {"X-API-Key": key}
    # Each answered after minutes (or seconds) of CPU on the event loop before the limits.
    refused = {
        "from=2026-01-01T00:00:00Z&to=2026-01-09T00:00:00Z&windowSize=MINUTE": "10,000 windows",
        "from=2024-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&windowSize=HOUR": "10,000 windows",
        "from=1000-01-01T00:00:00Z&to=2999-01-01T00:00:00Z&windowSize=DAY": "3,660 days",
        "from=1000-01-01T00:00:00Z&to=8999-01-01T00:00:00Z&windowSize=MONTH": "3,660 days",
    }
    for params, limit in refused.items():
        body = assert_problem(
            await contract.get(f"{QUERY}?{params}", headers=tenant), 400, code="query_too_large"
        )
        assert limit in body["detail"], body
    body = assert_problem(
        await contract.post(
            QUERY,
            json={
                "from": "1000-01-01T00:00:00Z",
                "to": "2999-01-01T00:00:00Z",
                "windowSize": "DAY",
            },
            headers=tenant,
        ),
        400,
        code="query_too_large",
    )
    usage = await api.client.get(
        "/v1/usage?from=1700-01-01T00:00:00Z&to=2999-01-01T00:00:00Z&windowSize=DAY",
        headers=tenant,
    )
    assert usage.status_code == 400, usage.text
    error = usage.json()["error"]
    assert error["code"] == "query_too_large" and "3,660 days" in error["message"]

    # Within the limits: ten years of days in a zone with daylight saving, and a total over
    # any range (one sum, no windows).
    within = [
        f"{QUERY}?from=2016-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&windowSize=DAY"
        "&windowTimeZone=America/New_York",
        f"{QUERY}?from=2016-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&windowSize=MONTH",
        f"{QUERY}?from=1000-01-01T00:00:00Z&to=8999-01-01T00:00:00Z",
    ]
    for url in within:
        response = await contract.get(url, headers=tenant)
        assert response.status_code == 200, response.text


async def test_a_worst_case_query_leaves_the_event_loop_to_other_tenants(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The longest range allowed, in a zone with daylight saving: while its time-zone work
    runs (held here until the other requests are answered), another tenant is served."""
    _, key_a = await api.tenant_with_key(name="heavy")
    _, key_b = await api.tenant_with_key(name="bystander")
    entered, release = threading.Event(), threading.Event()
    held: list[bool] = []
    real = query_module.utc_offset_minutes

    def held_offset(zone: ZoneInfo, minute: int) -> int:
        if not entered.is_set():
            entered.set()
            # On the event loop this wait is everyone's: nothing else is served meanwhile.
            held.append(release.wait(timeout=5))
        return real(zone, minute)

    monkeypatch.setattr(query_module, "utc_offset_minutes", held_offset)
    heavy = asyncio.create_task(
        api.client.get(
            f"{QUERY}?from=2016-01-01T00:00:00Z&to=2026-01-01T00:00:00Z&windowSize=DAY"
            "&windowTimeZone=America/New_York",
            headers={"X-API-Key": key_a},
        )
    )

    async def working() -> bool:
        return entered.is_set()

    await eventually(working, seconds=10)
    live = await api.client.get("/health/live")
    sessions = await api.client.get("/v1/kgent/sessions", headers={"X-API-Key": key_b})
    release.set()
    answer = await heavy
    assert live.status_code == 200 and sessions.status_code == 200
    assert answer.status_code == 200, answer.text
    assert held == [True], "the other requests waited for the heavy query's time-zone work"
