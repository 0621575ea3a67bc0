"""Pipelined publishing: bounded outstanding acks, refusals reported, sequences remembered."""

import pytest

from kgents.errors import EventsUnavailable
from kgents.ids import new_id
from kgents.streaming.bridge import JetStreamEventLog
from kgents.streaming.connection import NatsConnection
from kgents.streaming.pipeline import AckRouter

pytestmark = pytest.mark.anyio


async def test_outstanding_acks_stay_within_the_window(
    event_log: JetStreamEventLog, conn: NatsConnection
) -> None:
    batch = await AckRouter(conn).open_batch(window=4, ack_timeout=5.0)
    subject = f"kgent.session.{new_id('ses')}.chunk"
    for i in range(50):
        await batch.publish(subject, b"{}", {"Nats-Msg-Id": f"{subject}:{i}"})
        assert batch.sent - batch.acknowledged < 4
    await batch.flush()
    assert batch.acknowledged == 50
    seqs = [batch.seqs[i] for i in range(50)]
    assert seqs == list(range(seqs[0], seqs[0] + 50))


async def test_a_subject_without_a_stream_fails_without_waiting_for_acks(
    conn: NatsConnection,
) -> None:
    # An hour's ack timeout: only the server's "no responders" answer can end the flush.
    batch = await AckRouter(conn).open_batch(window=8, ack_timeout=3600.0)
    await batch.publish("kgent.nowhere.x", b"{}")
    with pytest.raises(EventsUnavailable, match="no stream"):
        await batch.flush()
    with pytest.raises(EventsUnavailable):  # the failure sticks
        await batch.publish("kgent.nowhere.x", b"{}")


async def test_a_refused_message_fails_the_batch(
    event_log: JetStreamEventLog, conn: NatsConnection
) -> None:
    batch = await AckRouter(conn).open_batch(window=8, ack_timeout=5.0)
    subject = f"kgent.session.{new_id('ses')}.chunk"
    await batch.publish(subject, b"{}", {"Nats-Expected-Stream": "some-other-stream"})
    with pytest.raises(EventsUnavailable, match="not stored"):
        await batch.flush()


async def test_batches_on_one_router_do_not_mix(
    event_log: JetStreamEventLog, conn: NatsConnection
) -> None:
    router = AckRouter(conn)
    first = await router.open_batch(window=16, ack_timeout=5.0)
    second = await router.open_batch(window=16, ack_timeout=5.0)
    subject = f"kgent.session.{new_id('ses')}.chunk"
    for _ in range(10):
        await first.publish(subject, b"{}")
        await second.publish(subject, b"{}")
    await first.flush()
    await second.flush()
    assert first.acknowledged == second.acknowledged == 10
    assert set(first.seqs.values()).isdisjoint(second.seqs.values())
