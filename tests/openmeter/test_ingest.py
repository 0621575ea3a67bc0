"""``POST /api/v1/events``: CloudEvents in three content types, all-or-nothing, problem details.

Every request and response here is checked against OpenMeter's spec (requests we mean to be
invalid are checked on the way back only).
"""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kgents.platform import Platform
from tests.conftest import Api
from tests.openmeter.conftest import T0, cloudevent, outbox_rows, tokens_data
from tests.openmeter.contract import ContractClient, assert_problem
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

CE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"


def platform_of(api: Api) -> Platform:
    platform: Platform = api.app.state.platform
    return platform


async def post_events(
    contract: ContractClient,
    api: Api,
    body: Any,
    content_type: str,
    *,
    headers: dict[str, str] | None = None,
    valid: bool = True,
) -> Any:
    return await contract.post(
        "/api/v1/events",
        content=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={"Content-Type": content_type, **(api.admin if headers is None else headers)},
        validate_request=valid,
    )


async def test_single_event_as_cloudevents_json(contract: ContractClient, api: Api) -> None:
    event = cloudevent(
        id="one", type="llm.tokens", data=tokens_data(7, 3), time="2025-07-07T01:02:03.456+02:00"
    )
    response = await post_events(contract, api, event, CE)
    assert response.status_code == 204 and response.content == b""
    [row] = await outbox_rows(platform_of(api))
    assert (row.id, row.type, row.subject, row.data) == (
        "one",
        "llm.tokens",
        "customer-1",
        event["data"],
    )
    stored = row.time if row.time.tzinfo else row.time.replace(tzinfo=UTC)
    assert stored == datetime(2025, 7, 6, 23, 2, 3, 456000, tzinfo=UTC)


async def test_batch_and_plain_json(contract: ContractClient, api: Api) -> None:
    batch = [cloudevent(id=f"b{i}", data=tokens_data(i)) for i in range(3)]
    assert (await post_events(contract, api, batch, BATCH)).status_code == 204
    assert (await post_events(contract, api, cloudevent(id="j1"), JSON)).status_code == 204
    plain = [cloudevent(id="j2"), cloudevent(id="j3")]
    assert (await post_events(contract, api, plain, f"{JSON}; charset=utf-8")).status_code == 204
    ids = [row.id for row in await outbox_rows(platform_of(api))]
    assert ids == ["b0", "b1", "b2", "j1", "j2", "j3"]


async def test_time_defaults_to_now_and_data_to_empty(contract: ContractClient, api: Api) -> None:
    before = datetime.now(UTC)
    event = cloudevent(id="untimed", time=None)
    assert (await post_events(contract, api, event, CE)).status_code == 204
    event = cloudevent(id="nulls", time=None, datacontenttype="application/json", extension="x")
    event["time"] = None
    event["data"] = None
    assert (await post_events(contract, api, event, CE)).status_code == 204
    rows = {row.id: row for row in await outbox_rows(platform_of(api))}
    for row in rows.values():
        stored = row.time if row.time.tzinfo else row.time.replace(tzinfo=UTC)
        assert before - timedelta(seconds=1) <= stored <= datetime.now(UTC)
        assert row.data == {}


async def test_a_bad_event_refuses_the_whole_batch(contract: ContractClient, api: Api) -> None:
    good = cloudevent(id="fine")
    no_subject = cloudevent(id="nosubj")
    del no_subject["subject"]
    bad_time = cloudevent(id="badtime", time="yesterday")
    response = await post_events(contract, api, [good, no_subject, bad_time], BATCH, valid=False)
    body = assert_problem(response, 400, code="invalid_event")
    assert body["detail"].startswith("events[1].subject: ")
    assert "nothing was stored" in body["detail"]
    fields = [(error["index"], error["field"]) for error in body["errors"]]
    assert fields == [(1, "events[1].subject"), (2, "events[2].time")]
    assert await outbox_rows(platform_of(api)) == []


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"specversion": "0.3"}, "specversion"),
        ({"specversion": None}, "specversion"),
        ({"id": ""}, "id"),
        ({"id": 12}, "id"),
        ({"source": "a\nb"}, "source"),
        ({"source": "s" * 200, "id": "i" * 56}, "id"),
        ({"type": "bad type"}, "type"),
        ({"type": "kgent.usage.>"}, "type"),
        ({"type": "a..b"}, "type"),
        ({"type": "x" * 129}, "type"),
        ({"subject": ""}, "subject"),
        ({"subject": "x" * 257}, "subject"),
        ({"time": "2026-03-02T00:00:00"}, "time"),
        ({"time": "2026-03-02"}, "time"),
        ({"time": "0999-12-31T23:59:59Z"}, "time"),
        ({"time": 1767225600}, "time"),
        ({"datacontenttype": "text/plain"}, "datacontenttype"),
        ({"data": [1, 2]}, "data"),
        ({"data": "text"}, "data"),
        ({"data": {"note": "a\u0000b"}}, "data"),  # PostgreSQL answered 503, SQLite stored it
        ({"data": {"\u0000": 1}}, "data"),
    ],
)
async def test_invalid_fields_are_named(
    contract: ContractClient, api: Api, change: dict[str, Any], field: str
) -> None:
    event = {**cloudevent(), **change}
    response = await post_events(contract, api, [cloudevent(), event], JSON, valid=False)
    body = assert_problem(response, 400, code="invalid_event")
    assert body["errors"][0]["field"] == f"events[1].{field}", body
    assert body["errors"][0]["index"] == 1
    assert await outbox_rows(platform_of(api)) == []


async def test_bodies_that_are_not_events(contract: ContractClient, api: Api) -> None:
    cases: list[tuple[bytes, str, int, str]] = [
        (b"{not json", CE, 400, "invalid_json"),
        (b'{"data": NaN}', CE, 400, "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, JSON, 400, "invalid_json"),
        (json.dumps([cloudevent()]).encode(), CE, 400, "invalid_json"),
        (json.dumps(cloudevent()).encode(), BATCH, 400, "invalid_json"),
        (b'"an event"', JSON, 400, "invalid_json"),
        (json.dumps(cloudevent()).encode(), "text/plain", 415, "unsupported_media_type"),
        (b"[1]", JSON, 400, "invalid_event"),
    ]
    for body, content_type, status, code in cases:
        response = await post_events(contract, api, body, content_type, valid=False)
        assert_problem(response, status, code=code)
    lone_surrogate = b'{"specversion": "1.0", "id": "s", "source": "x", "type": "t", ' + (
        b'"subject": "c", "data": {"name": "\\ud800"}}'
    )
    response = await post_events(contract, api, lone_surrogate, CE, valid=False)
    assert assert_problem(response, 400)["errors"][0]["field"] == "events[0].data"
    deep: Any = {}
    for _ in range(100):
        deep = {"d": deep}
    response = await post_events(contract, api, cloudevent(data=deep), CE, valid=False)
    assert assert_problem(response, 400)["errors"][0]["field"] == "events[0].data"
    assert await outbox_rows(platform_of(api)) == []


async def test_batch_size_limit(contract: ContractClient, api: Api) -> None:
    batch = [cloudevent(id=f"n{i}") for i in range(1001)]
    response = await post_events(contract, api, batch, BATCH, valid=False)
    assert_problem(response, 400, code="batch_too_large")
    assert (await post_events(contract, api, batch[:1000], BATCH)).status_code == 204
    assert len(await outbox_rows(platform_of(api))) == 1000


async def test_duplicates_are_accepted_silently_first_wins(
    contract: ContractClient, api: Api
) -> None:
    first = cloudevent(id="dup", data=tokens_data(1))
    again = {**first, "data": tokens_data(99)}
    response = await post_events(contract, api, [first, again, cloudevent(id="other")], BATCH)
    assert response.status_code == 204
    # Later: the same event alone, and mixed into a batch of new ones.
    assert (await post_events(contract, api, again, CE)).status_code == 204
    mixed = [cloudevent(id="new-1"), again, cloudevent(id="other"), cloudevent(id="new-2")]
    assert (await post_events(contract, api, mixed, BATCH)).status_code == 204
    rows = {row.id: row for row in await outbox_rows(platform_of(api))}
    assert sorted(rows) == ["dup", "new-1", "new-2", "other"]
    assert rows["dup"].data == tokens_data(1)


async def test_ingest_is_admin_only(contract: ContractClient, api: Api) -> None:
    _, key = await api.tenant_with_key()
    event = cloudevent()
    response = await post_events(contract, api, event, CE, headers={}, valid=False)
    assert_problem(response, 401, code="unauthorized")
    for headers in (
        {"Authorization": f"Bearer {key}"},
        {"X-API-Key": key},
    ):
        response = await post_events(contract, api, event, CE, headers=headers, valid=False)
        assert_problem(response, 403, code="admin_only")
    wrong = {"Authorization": "Bearer kg_admin_not_the_token"}
    response = await post_events(contract, api, event, CE, headers=wrong, valid=False)
    assert_problem(response, 401)
    assert await outbox_rows(platform_of(api)) == []


async def test_huge_body_is_refused(contract: ContractClient, api: Api) -> None:
    event = cloudevent(data={"blob": "x" * (1024 * 1024)})
    response = await api.client.post(
        "/api/v1/events", content=json.dumps(event), headers={"Content-Type": CE, **api.admin}
    )
    assert_problem(response, 413, code="payload_too_large")
    assert await outbox_rows(platform_of(api)) == []


async def test_ingested_events_are_relayed_to_jetstream(contract: ContractClient, api: Api) -> None:
    batch = [cloudevent(id=f"r{i}", time=T0) for i in range(5)]
    assert (await post_events(contract, api, batch, BATCH)).status_code == 204

    async def relayed() -> bool:
        rows = await outbox_rows(platform_of(api))
        return len(rows) == 5 and all(row.sent_at is not None for row in rows)

    await eventually(relayed, seconds=10)
