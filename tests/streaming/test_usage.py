"""Usage events reach ``kgent-usage`` as CloudEvents, acknowledged, and deduplicated by id."""

import json
from datetime import UTC, datetime

import pytest
from nats.js import api

from kgents.errors import InvalidInput
from kgents.ids import new_id
from kgents.metering import events as usage_events
from kgents.records import UsageEvent
from kgents.streaming.connection import NatsConnection
from kgents.streaming.topology import USAGE_STREAM, ensure_streams
from kgents.streaming.usage import JetStreamUsagePublisher

pytestmark = pytest.mark.anyio

AT = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def usage_batch(tenant_id: str, n: int) -> list[UsageEvent]:
    return [
        usage_events.api_request(
            tenant_id=tenant_id, endpoint="/v1/x", method="GET", status_code=200, at=AT
        )
        for _ in range(n)
    ] + [
        usage_events.llm_tokens(
            tenant_id=tenant_id,
            session_id=new_id("ses"),
            turn_id=new_id("turn"),
            tokens_in=10,
            tokens_out=20,
            model="demo",
            estimated=False,
            at=AT,
        )
    ]


async def count(conn: NatsConnection, subject: str) -> int:
    info = await conn.js.stream_info(USAGE_STREAM, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def test_usage_events_are_published_once(conn: NatsConnection) -> None:
    await ensure_streams(conn, replicas=1)
    tenant = new_id("ten")
    events = usage_batch(tenant, 600)  # more than one ack window
    publisher = JetStreamUsagePublisher(conn, window=256)
    await publisher.publish_usage(events)
    await publisher.publish_usage(events)  # the relay died before marking them sent
    assert await count(conn, "kgent.usage.api.request") >= 600
    before = await count(conn, "kgent.usage.>")
    await publisher.publish_usage(events)
    assert await count(conn, "kgent.usage.>") == before

    tokens = events[-1]
    stored = await conn.js.get_last_msg(USAGE_STREAM, "kgent.usage.llm.tokens")
    assert stored.headers == {api.Header.MSG_ID.value: f"kgents-api:{tokens.id}"}
    body = json.loads(stored.data or b"")
    assert body["id"] == tokens.id
    assert body["type"] == "llm.tokens"
    assert body["subject"] == tenant
    assert body["time"] == "2026-03-04T05:06:07.000000Z"
    assert body["specversion"] == "1.0"
    assert body["data"]["tokens_in"] == 10


async def test_an_invalid_type_publishes_nothing(conn: NatsConnection) -> None:
    await ensure_streams(conn, replicas=1)
    before = await count(conn, "kgent.usage.>")
    good = usage_batch(new_id("ten"), 1)
    bad = UsageEvent(id="x", type="llm.*", subject="ten_1", time=AT)
    with pytest.raises(InvalidInput):
        await JetStreamUsagePublisher(conn).publish_usage([*good, bad])
    assert await count(conn, "kgent.usage.>") == before


async def test_nothing_to_publish(conn: NatsConnection) -> None:
    await JetStreamUsagePublisher(conn).publish_usage([])
