"""``GET /api/v1/meters[/{meterIdOrSlug}]`` and ``GET|POST …/query``, checked against the spec.

Events go straight into the meter store here (what the processor does after ingest), so the
numbers are exact whether or not a processor runs in the test server.
"""

import re
from datetime import datetime, timedelta
from typing import Any

import pytest

from kgents.metering.meters import DEFAULT_METERS
from kgents.platform import Platform
from kgents.records import UsageEvent
from tests.conftest import Api
from tests.openmeter.conftest import SOURCE, T0
from tests.openmeter.contract import ContractClient, assert_problem

pytestmark = pytest.mark.anyio

QUERY = "/api/v1/meters/llm_tokens_in/query"
ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")


def z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def store(api: Api, *events: tuple[str, int, str, timedelta]) -> None:
    """(subject, tokens in, model, offset from T0) as ``llm.tokens`` events in the meter store."""
    platform: Platform = api.app.state.platform
    await platform.meters.ingest(
        [
            UsageEvent(
                id=f"q-{index}",
                source=SOURCE,
                type="llm.tokens",
                subject=subject,
                time=T0 + offset,
                data={"tokens_in": tokens, "tokens_out": 0, "model": model},
            )
            for index, (subject, tokens, model, offset) in enumerate(events)
        ]
    )


@pytest.fixture
async def usage(api: Api) -> None:
    await store(
        api,
        ("customer-1", 10, "gpt", timedelta(minutes=10)),
        ("customer-1", 5, "demo", timedelta(hours=2)),
        ("customer-1", 1, "demo", timedelta(hours=23, minutes=10)),
        ("customer-1", 7, "gpt", timedelta(days=1, minutes=30)),
        ("customer-2", 100, "gpt", timedelta(minutes=10)),
    )


def values(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (row["windowStart"], row["windowEnd"], row["subject"], row["groupBy"], row["value"])
        for row in body["data"]
    ]


async def test_list_and_get_meters(contract: ContractClient, api: Api) -> None:
    response = await contract.get("/api/v1/meters", headers=api.admin)
    assert response.status_code == 200
    meters = response.json()
    assert [meter["slug"] for meter in meters] == [meter.slug for meter in DEFAULT_METERS]
    tokens_in = next(meter for meter in meters if meter["slug"] == "llm_tokens_in")
    assert ULID.match(tokens_in["id"])
    assert tokens_in["aggregation"] == "SUM" and tokens_in["eventType"] == "llm.tokens"
    assert tokens_in["valueProperty"] == "$.tokens_in"
    assert tokens_in["groupBy"] == {"model": "$.model"}
    assert tokens_in["name"] == "llm_tokens_in"  # defaults to the slug
    assert "valueProperty" not in next(m for m in meters if m["slug"] == "api_requests")

    for ref in ("llm_tokens_in", tokens_in["id"]):
        response = await contract.get(f"/api/v1/meters/{ref}", headers=api.admin)
        assert response.status_code == 200 and response.json() == tokens_in
    response = await contract.get("/api/v1/meters/no_such_meter", headers=api.admin)
    assert_problem(response, 404, code="not_found")

    params = {"orderBy": "key", "order": "DESC", "pageSize": "2", "page": "2"}
    response = await contract.get("/api/v1/meters", params=params, headers=api.admin)
    slugs = sorted((meter.slug for meter in DEFAULT_METERS), reverse=True)
    assert [meter["slug"] for meter in response.json()] == slugs[2:4]


async def test_query_get_windows_subjects_and_groups(
    contract: ContractClient, api: Api, usage: None
) -> None:
    day, next_day = T0 + timedelta(days=1), T0 + timedelta(days=2)
    window = {"from": z(T0), "to": z(next_day), "windowSize": "DAY"}

    response = await contract.get(
        QUERY, params={**window, "subject": "customer-1"}, headers=api.admin
    )
    body = response.json()
    assert {key: body[key] for key in ("from", "to", "windowSize")} == {
        "from": z(T0),
        "to": z(next_day),
        "windowSize": "DAY",
    }
    assert values(body) == [
        (z(T0), z(day), "customer-1", {}, 16.0),
        (z(day), z(next_day), "customer-1", {}, 7.0),
    ]

    params = {**window, "subject": "customer-1", "groupBy": "model"}
    response = await contract.get(QUERY, params=params, headers=api.admin)
    assert values(response.json()) == [
        (z(T0), z(day), "customer-1", {"model": "demo"}, 6.0),
        (z(T0), z(day), "customer-1", {"model": "gpt"}, 10.0),
        (z(day), z(next_day), "customer-1", {"model": "gpt"}, 7.0),
    ]

    # Repeated subject and groupBy, HOUR windows, a range that cuts out the first event.
    params = [
        ("from", z(T0 + timedelta(minutes=11))),
        ("to", z(T0 + timedelta(hours=3))),
        ("windowSize", "HOUR"),
        ("subject", "customer-1"),
        ("subject", "customer-2"),
        ("groupBy", "subject"),
        ("groupBy", "model"),
    ]
    response = await contract.get(QUERY, params=params, headers=api.admin)
    hour2 = T0 + timedelta(hours=2)
    assert values(response.json()) == [
        (z(hour2), z(hour2 + timedelta(hours=1)), "customer-1", {"model": "demo"}, 5.0)
    ]

    # No window size, no subject: one total over the range; subject is null.
    response = await contract.get(
        QUERY, params={"from": z(T0), "to": z(next_day)}, headers=api.admin
    )
    body = response.json()
    assert "windowSize" not in body
    assert values(body) == [(z(T0), z(next_day), None, {}, 123.0)]
    # No range at all (for one subject: other suites' events may be in the database).
    response = await contract.get(QUERY, params={"subject": "customer-2"}, headers=api.admin)
    assert [row["value"] for row in response.json()["data"]] == [100.0]
    assert "from" not in response.json() and "to" not in response.json()


async def test_query_window_time_zone(contract: ContractClient, api: Api, usage: None) -> None:
    params = {
        "from": z(T0),
        "to": z(T0 + timedelta(days=2)),
        "windowSize": "DAY",
        "windowTimeZone": "Europe/Berlin",
        "subject": "customer-1",
    }
    response = await contract.get(QUERY, params=params, headers=api.admin)
    local_midnight = T0 - timedelta(hours=2)  # 2025-07-07 00:00 in Berlin (CEST)
    assert values(response.json()) == [
        (z(local_midnight), z(local_midnight + timedelta(days=1)), "customer-1", {}, 15.0),
        (
            z(local_midnight + timedelta(days=1)),
            z(local_midnight + timedelta(days=2)),
            "customer-1",
            {},
            8.0,
        ),
    ]


async def test_query_post_matches_get(contract: ContractClient, api: Api, usage: None) -> None:
    body = {
        "from": "2025-07-07T02:00:00+02:00",
        "to": z(T0 + timedelta(days=2)),
        "windowSize": "DAY",
        "windowTimeZone": "UTC",
        "subject": ["customer-1", "customer-2"],
        "groupBy": ["model"],
        "clientId": "f74e58ed-94ce-4041-ae06-cf45420451a3",
    }
    posted = await contract.post(QUERY, json=body, headers=api.admin)
    assert posted.status_code == 200
    params = [(key, value) for key, value in body.items() if not isinstance(value, list)]
    params += [("subject", s) for s in body["subject"]] + [("groupBy", "model")]
    got = await contract.get(QUERY, params=params, headers=api.admin)
    assert posted.json() == got.json()
    assert posted.json()["from"] == z(T0)  # normalised to UTC
    assert {row["subject"] for row in posted.json()["data"]} == {"customer-1", "customer-2"}
    bounded = await contract.post(QUERY, json={"to": z(T0 + timedelta(days=2))}, headers=api.admin)
    assert [row["value"] for row in bounded.json()["data"]] == [123.0]
    empty = await contract.post(QUERY, json={}, headers=api.admin)
    assert empty.status_code == 200 and empty.json()["data"][0]["subject"] is None


@pytest.mark.parametrize(
    "params",
    [
        {"windowSize": "WEEK"},
        {"from": "2026-03-02T00:00:30Z"},
        {"from": "2026-03-02T00:00:00"},
        {"from": "not a time"},
        {"from": z(T0 + timedelta(days=1)), "to": z(T0)},
        {"windowTimeZone": "Mars/Olympus_Mons"},
        {"groupBy": "colour"},
        {"filterGroupBy[model]": "gpt"},
        {"filterCustomerId": "c1"},
        {"advancedMeterGroupByFilters": '{"model": {"$eq": "gpt"}}'},
    ],
)
async def test_bad_query_parameters_are_400_problems(
    contract: ContractClient, api: Api, params: dict[str, str]
) -> None:
    response = await contract.get(QUERY, params=params, headers=api.admin, validate_request=False)
    assert_problem(response, 400)


@pytest.mark.parametrize(
    "body",
    [
        {"windowSize": "WEEK"},
        {"from": "2026-03-02T00:00:00"},
        {"subject": "customer-1"},
        {"subject": [f"s{i}" for i in range(101)]},
        {"groupBy": ["colour"]},
        {"filterGroupBy": {"model": ["gpt"]}},
        {"windwSize": "DAY"},
    ],
)
async def test_bad_query_bodies_are_400_problems(
    contract: ContractClient, api: Api, body: dict[str, Any]
) -> None:
    response = await contract.post(QUERY, json=body, headers=api.admin, validate_request=False)
    assert_problem(response, 400)
    response = await api.client.post(
        QUERY, content=b"{", headers={**api.admin, "Content-Type": "application/json"}
    )
    assert_problem(response, 400)


async def test_unknown_routes_and_methods_under_api_v1_are_problems(api: Api) -> None:
    assert_problem(await api.client.get("/api/v1/nothing", headers=api.admin), 404)
    assert_problem(await api.client.delete("/api/v1/meters/llm_tokens_in", headers=api.admin), 405)
    assert_problem(await api.client.get("/api/v1/meters/x/query", headers=api.admin), 404)


async def test_tenant_key_reads_meters_and_only_its_own_subject(
    contract: ContractClient, api: Api
) -> None:
    tenant_id, key = await api.tenant_with_key(name="acme")
    other_id, _ = await api.tenant_with_key(name="globex")
    await store(
        api,
        (tenant_id, 3, "gpt", timedelta(minutes=1)),
        (other_id, 4, "gpt", timedelta(minutes=2)),
    )
    window = {"from": z(T0), "to": z(T0 + timedelta(hours=1))}
    for headers in ({"Authorization": f"Bearer {key}"}, {"X-API-Key": key}):
        assert (await contract.get("/api/v1/meters", headers=headers)).status_code == 200
        meter = await contract.get("/api/v1/meters/llm_tokens_in", headers=headers)
        assert meter.status_code == 200
        response = await contract.get(QUERY, params=window, headers=headers)
        assert values(response.json()) == [(z(T0), z(T0 + timedelta(hours=1)), tenant_id, {}, 3.0)]
        params = {**window, "subject": tenant_id, "groupBy": "subject"}
        response = await contract.get(QUERY, params=params, headers=headers)
        assert [row["value"] for row in response.json()["data"]] == [3.0]
        response = await contract.post(QUERY, json=window, headers=headers)
        assert [row["subject"] for row in response.json()["data"]] == [tenant_id]

        for subjects in ([other_id], [tenant_id, other_id], ["ten_does_not_exist"]):
            response = await contract.get(
                QUERY, params={**window, "subject": subjects}, headers=headers
            )
            assert_problem(response, 403, code="subject_forbidden")
            response = await contract.post(
                QUERY, json={**window, "subject": subjects}, headers=headers
            )
            assert_problem(response, 403, code="subject_forbidden")


async def test_authentication_on_reads(contract: ContractClient, api: Api) -> None:
    for path in ("/api/v1/meters", "/api/v1/meters/llm_tokens_in", QUERY):
        assert_problem(await contract.get(path), 401, code="unauthorized")
        bad = {"Authorization": "Bearer kg_live_00000000000000000000000000000000"}
        assert_problem(await contract.get(path, headers=bad), 401)
    tenant_id, _ = await api.tenant_with_key()
    created = await api.client.post(
        f"/v1/tenants/{tenant_id}/keys", json={"scopes": ["sessions"]}, headers=api.admin
    )
    sessions_only = {"X-API-Key": created.json()["key"]}
    assert_problem(await contract.get(QUERY, headers=sessions_only), 403, code="scope_missing")
