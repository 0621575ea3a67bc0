"""The official OpenMeter Python SDK (``openmeter`` on PyPI) as a client of a real kgents server.

Events ingested through the SDK take the whole production path (outbox, relay, JetStream, the
metering processor, the meter store) before the SDK's queries see them.
"""

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cloudevents.conversion import to_dict
from cloudevents.http import CloudEvent
from corehttp.exceptions import ClientAuthenticationError, HttpResponseError
from openmeter.aio import Client
from openmeter.models import Event, MeterQueryRequest

from kgents.config import Settings
from tests.conftest import ADMIN_TOKEN
from tests.openmeter.conftest import T0
from tests.support.servers import server_in_thread
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio

SOURCE = "openmeter-sdk-test"
JSON = {"Accept": "application/json"}


@pytest.fixture
def server(isolated_settings: Settings) -> Iterator[str]:
    with server_in_thread(isolated_settings) as base_url:
        yield base_url


async def tenant_with_key(base_url: str) -> tuple[str, str]:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with httpx.AsyncClient(base_url=base_url, headers=admin) as client:
        tenant = (await client.post("/v1/tenants", json={"name": "sdk"})).json()
        key = (await client.post(f"/v1/tenants/{tenant['id']}/keys", json={})).json()
    return tenant["id"], key["key"]


def tokens(event_id: str, subject: str, tokens_in: int, model: str, minutes: int) -> Event:
    return Event(
        id=f"{event_id}-{subject}",
        source=SOURCE,
        specversion="1.0",
        type="llm.tokens",
        subject=subject,
        time=T0 + timedelta(minutes=minutes),
        data={"tokens_in": tokens_in, "tokens_out": 1, "model": model},
    )


def rows(result: Any) -> list[tuple[Any, ...]]:
    return [(row.subject, dict(row.group_by or {}), row.value) for row in result.data]


async def test_sdk_ingests_and_queries(server: str) -> None:
    # Tenant ids are unique, so event ids are new to JetStream's dedupe window in every run.
    tenant_id, key = await tenant_with_key(server)
    async with Client(endpoint=server, token=ADMIN_TOKEN, headers=JSON) as admin:
        # The SDK's three ways to ingest: one CloudEvent, a batch, and plain JSON.
        single = CloudEvent(
            attributes={
                "id": f"sdk-1-{tenant_id}",
                "type": "llm.tokens",
                "source": SOURCE,
                "subject": tenant_id,
                "time": (T0 + timedelta(minutes=1)).isoformat(),
            },
            data={"tokens_in": 10, "tokens_out": 1, "model": "gpt"},
        )
        await admin.events.ingest_event(to_dict(single))
        await admin.events.ingest_events(
            [
                tokens("sdk-2", tenant_id, 5, "demo", 2),
                tokens(f"sdk-3-{tenant_id}", "someone-else", 100, "gpt", 3),
            ]
        )
        await admin.events.ingest_events_json([tokens("sdk-4", tenant_id, 7, "gpt", 24 * 60 + 5)])
        await admin.events.ingest_events_json(tokens("sdk-1", tenant_id, 999, "gpt", 1))  # again

        meters = {meter.slug: meter for meter in await admin.meters.list()}
        assert {"api_requests", "llm_tokens_in", "llm_tokens_out", "session_count"} <= set(meters)
        meter = await admin.meters.get("llm_tokens_in")
        assert meter.id == meters["llm_tokens_in"].id and meter.aggregation == "SUM"
        assert (await admin.meters.get(meter.id)).slug == "llm_tokens_in"

        window: dict[str, Any] = {"from_parameter": T0, "to": T0 + timedelta(days=2)}

        async def by_day() -> Any:
            return await admin.meters.query_json(
                "llm_tokens_in",
                **window,
                window_size="DAY",
                subject=[tenant_id],
                group_by=["model"],
            )

        async def three_rows() -> bool:  # the processor stores events asynchronously
            return len((await by_day()).data) == 3

        await eventually(three_rows, seconds=30)
        result = await by_day()
        assert rows(result) == [
            (tenant_id, {"model": "demo"}, 5.0),
            (tenant_id, {"model": "gpt"}, 10.0),
            (tenant_id, {"model": "gpt"}, 7.0),
        ]
        assert result.window_size == "DAY"
        assert result.data[0].window_start == T0
        assert result.data[2].window_start == T0 + timedelta(days=1)

        request = MeterQueryRequest(
            from_property=T0, to=T0 + timedelta(days=2), group_by=["subject"]
        )

        async def two_rows() -> bool:
            return len((await admin.meters.query("llm_tokens_in", request)).data) == 2

        await eventually(two_rows, seconds=30)
        posted = await admin.meters.query("llm_tokens_in", request)
        assert sorted(rows(posted)) == sorted([(tenant_id, {}, 22.0), ("someone-else", {}, 100.0)])

        # A bad event: the SDK raises with the problem details, naming the event and field.
        with pytest.raises(HttpResponseError) as refused:
            await admin.events.ingest_events(
                [tokens("sdk-5", tenant_id, 1, "gpt", 4), {"id": "x"}]  # type: ignore[list-item]
            )
        assert refused.value.status_code == 400
        assert "events[1]" in refused.value.response.json()["detail"]

    # A tenant's key: its own subject only, and no ingest.
    async with Client(endpoint=server, token=key, headers=JSON) as tenant:
        own = await tenant.meters.query_json("llm_tokens_in", **window)
        assert rows(own) == [(tenant_id, {}, 22.0)]
        with pytest.raises(HttpResponseError) as forbidden:
            await tenant.meters.query_json("llm_tokens_in", **window, subject=["someone-else"])
        assert forbidden.value.status_code == 403
        with pytest.raises(HttpResponseError) as forbidden:
            await tenant.events.ingest_event(to_dict(single))
        assert forbidden.value.status_code == 403
    async with Client(endpoint=server, headers=JSON) as anonymous:
        with pytest.raises(ClientAuthenticationError):
            await anonymous.meters.list()
