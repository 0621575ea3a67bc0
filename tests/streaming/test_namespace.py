"""``KGENTS_NATS_PREFIX``: two deployments on one NATS server never see each other's events."""

import pytest

from kgents.errors import InvalidInput
from kgents.ids import new_id
from kgents.sessions.ports import SessionEvent
from kgents.streaming.bridge import JetStreamEventLog
from kgents.streaming.connection import NatsConnection
from kgents.streaming.subjects import (
    Namespace,
    event_type_of,
    session_id_of,
    session_subject,
    usage_subject,
)
from kgents.streaming.topology import ensure_streams
from kgents.streaming.usage import JetStreamUsagePublisher
from kgents.streaming.usage_consumer import ConsumerSpec, UsageConsumer
from tests.streaming.test_usage import usage_batch

pytestmark = pytest.mark.anyio

BLUE = Namespace("blue")


def test_a_prefix_goes_before_every_name() -> None:
    assert session_subject("ses_1", "chunk", BLUE) == "blue.kgent.session.ses_1.chunk"
    assert usage_subject("llm.tokens", BLUE) == "blue.kgent.usage.llm.tokens"
    assert BLUE.cancel_subjects == "blue.kgent.control.cancel.*"
    assert (BLUE.events_stream, BLUE.usage_stream) == ("blue-kgent-events", "blue-kgent-usage")
    assert BLUE.metering_consumer == "blue-metering"
    assert session_id_of("blue.kgent.session.ses_1.chunk", BLUE) == "ses_1"
    assert event_type_of("blue.kgent.session.ses_1.chunk", BLUE) == "chunk"
    # Another deployment's subjects are not ours.
    assert session_id_of("kgent.session.ses_1.chunk", BLUE) is None
    assert event_type_of("green.kgent.session.ses_1.chunk", BLUE) is None


@pytest.mark.parametrize("bad", ["a.b", "*", ">", "a b", "x" * 65])
def test_a_prefix_is_one_plain_token(bad: str) -> None:
    with pytest.raises(InvalidInput):
        Namespace(bad)


async def test_deployments_sharing_a_server_are_apart(conn: NatsConnection) -> None:
    await ensure_streams(conn, replicas=1)
    outcome = await ensure_streams(conn, replicas=1, ns=BLUE)
    assert [s.name for s in outcome] == ["blue-kgent-events", "blue-kgent-usage"]

    # Usage events of one deployment reach only its own durable consumer.
    default_usage = await conn.js.stream_info("kgent-usage")
    events = usage_batch(new_id("ten"), 2)
    await JetStreamUsagePublisher(conn, ns=BLUE).publish_usage(events)
    assert (await conn.js.stream_info("kgent-usage")).state == default_usage.state
    consumer = UsageConsumer(conn, spec=ConsumerSpec.in_namespace(BLUE, ack_wait_seconds=30))
    try:
        deliveries = await consumer.fetch(batch=10, no_wait=True)
        assert sorted(d.event.id for d in deliveries if d.event) == sorted(e.id for e in events)
        for delivery in deliveries:
            await delivery.ack()
        info = await conn.js.consumer_info("blue-kgent-usage", "blue-metering")
        assert info.config.filter_subject == "blue.kgent.usage.>"
    finally:
        await consumer.close()

    # Session events: published, followed and read back within the deployment only.
    session_id = new_id("ses")
    blue = JetStreamEventLog(conn, ns=BLUE, heartbeat_seconds=1.0)
    seq = await blue.publish(
        SessionEvent(session_id, "chunk", {"turn_id": "t", "text": "hi", "index": 0}, "t:0")
    )
    stored = await conn.js.get_msg("blue-kgent-events", seq)
    assert stored.subject == f"blue.kgent.session.{session_id}.chunk"
    assert await JetStreamEventLog(conn).last_sequence(session_id) is None
    assert await blue.turn_chunks(session_id, "t", first_seq=seq) == ["hi"]
    async with await blue.open_follower(session_id, after_seq=None, from_start=True) as follower:
        received = await follower.next_batch(10)
    assert [(r.seq, r.event.data["text"]) for r in received] == [(seq, "hi")]
