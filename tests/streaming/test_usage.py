"""Usage events reach ``kgent-usage`` as CloudEvents, acknowledged, and deduplicated by id."""

import json
from datetime import UTC, datetime

import pytest
from nats.js import api

from kgents.errors import InvalidInput
from kgents.ids import new_id
from kgents.metering import cloudevents
from kgents.metering import events as usage_events
from kgents.metering.relay import StoredUsageEvent
from kgents.records import UsageEvent
from kgents.streaming.connection import NatsConnection
from kgents.streaming.topology import USAGE_STREAM, ensure_streams
from kgents.streaming.usage import JetStreamUsagePublisher
from kgents.streaming.wire import encode_usage_event

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


async def test_nothing_to_publish_sends_nothing(conn: NatsConnection) -> None:
    await ensure_streams(conn, replicas=1)
    before = await count(conn, "kgent.usage.>")
    publisher = JetStreamUsagePublisher(conn)
    await publisher.publish_usage([])
    await publisher.publish_stored([])
    assert await count(conn, "kgent.usage.>") == before
    await conn.close()  # and needs no connection to do it
    await publisher.publish_usage([])


def stored_form(event: UsageEvent) -> StoredUsageEvent:
    """``event`` as the outbox returns it to the relay (``data`` stored with ``json.dumps``)."""
    return StoredUsageEvent(
        source=event.source,
        id=event.id,
        type=event.type,
        subject=event.subject,
        time=event.time.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        data_json=json.dumps(event.data),
    )


async def test_stored_events_go_on_the_wire_as_their_decoded_form_would(
    conn: NatsConnection,
) -> None:
    """The relay's path: the same subject, dedupe header and CloudEvent (decoded) as
    ``publish_usage`` of the decoded event, and a repeat is absorbed by the dedupe."""
    await ensure_streams(conn, replicas=1)
    tenant = new_id("ten")
    odd = UsageEvent(
        id='id "quoted" \\',  # ASCII: nats-py reads other header bytes back as email.Header
        source="src/x",
        type="llm.tokens",
        subject=f"{tenant}\u2028",
        time=AT,
        data={"text": 'line\nbreak \u00fc "q"', "n": [1, 2.5, None, True]},
    )
    events = [*usage_batch(tenant, 300), odd]
    publisher = JetStreamUsagePublisher(conn, window=64)
    await publisher.publish_stored([stored_form(e) for e in events])
    before = await count(conn, "kgent.usage.>")
    await publisher.publish_stored([stored_form(e) for e in events])
    assert await count(conn, "kgent.usage.>") == before

    for event in (events[299], odd):  # the last of their subjects
        expected = encode_usage_event(event)
        stored = await conn.js.get_last_msg(USAGE_STREAM, expected.subject)
        assert stored.headers == expected.headers
        assert stored.subject == expected.subject
        assert json.loads(stored.data or b"") == json.loads(expected.payload)
        decoded = cloudevents.load_json(stored.data or b"")
        assert cloudevents.decode_event(decoded, default_time=AT) == event


async def test_a_stored_event_with_an_invalid_type_publishes_nothing(
    conn: NatsConnection,
) -> None:
    await ensure_streams(conn, replicas=1)
    before = await count(conn, "kgent.usage.>")
    good = [stored_form(e) for e in usage_batch(new_id("ten"), 1)]
    bad = stored_form(UsageEvent(id="x", type="llm.*", subject="ten_1", time=AT))
    with pytest.raises(InvalidInput):
        await JetStreamUsagePublisher(conn).publish_stored([*good, bad])
    newline = stored_form(UsageEvent(id="x\r\ny", type="llm.tokens", subject="ten_1", time=AT))
    with pytest.raises(InvalidInput):
        await JetStreamUsagePublisher(conn).publish_stored([*good, newline])
    assert await count(conn, "kgent.usage.>") == before
