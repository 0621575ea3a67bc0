"""A single acknowledged publish: which failures are retried until failover ends, which are not."""

import asyncio
import logging

import nats.errors
import nats.js.errors
import pytest

from kgents.errors import EventsUnavailable
from kgents.ids import new_id
from kgents.streaming.bridge import JetStreamEventLog
from kgents.streaming.connection import NatsConnection
from kgents.streaming.failover import publish_with_failover
from kgents.streaming.pipeline import AckRouter
from kgents.streaming.wire import WireMessage
from tests.support.nats import NatsServer

pytestmark = pytest.mark.anyio


async def test_a_refusal_by_the_stream_is_not_retried(
    event_log: JetStreamEventLog, conn: NatsConnection, caplog: pytest.LogCaptureFixture
) -> None:
    # An hour of failover: only classifying the 400 as final ends the call.
    subject = f"kgent.session.{new_id('ses')}.chunk"
    message = WireMessage(subject, b"{}", {"Nats-Expected-Stream": "some-other-stream"})
    with caplog.at_level(logging.WARNING), pytest.raises(EventsUnavailable) as refused:
        await publish_with_failover(
            AckRouter(conn), message, ack_timeout=5.0, failover_seconds=3600.0
        )
    assert isinstance(refused.value.__cause__, nats.js.errors.BadRequestError)
    assert "gave up" not in caplog.text  # refused on the first try


async def test_no_stream_for_the_subject_is_retried_until_failover_ends(
    conn: NatsConnection, caplog: pytest.LogCaptureFixture
) -> None:
    message = WireMessage(f"kgent.nowhere.{new_id('x')}", b"{}", None)
    with caplog.at_level(logging.WARNING), pytest.raises(EventsUnavailable) as refused:
        await publish_with_failover(
            AckRouter(conn), message, ack_timeout=3600.0, failover_seconds=0.5
        )
    assert isinstance(refused.value.__cause__, nats.js.errors.NoStreamResponseError)
    assert "gave up publishing" in caplog.text  # after more than one try


async def test_no_ack_is_a_timeout_retried_until_failover_ends(conn: NatsConnection) -> None:
    # A core subscriber takes the message (so no "no responders") and never answers.
    subject = f"kgent.silent.{new_id('x')}"
    silent = await conn.client.subscribe(subject)
    try:
        with pytest.raises(EventsUnavailable) as unanswered:
            await publish_with_failover(
                AckRouter(conn),
                WireMessage(subject, b"{}", None),
                ack_timeout=0.1,
                failover_seconds=0.5,
            )
    finally:
        await silent.unsubscribe()
    assert isinstance(unanswered.value.__cause__, nats.errors.TimeoutError)


async def test_a_wait_for_an_ack_ends_at_once_when_the_connection_drops(
    own_nats: NatsServer,
) -> None:
    conn = await NatsConnection.connect(own_nats.url)
    try:
        # A core subscriber takes the message and never answers; an hour's ack timeout: only
        # the connection's loss can end the wait.
        subject = f"kgent.silent.{new_id('x')}"
        silent = await conn.client.subscribe(subject)
        waiting = asyncio.create_task(
            AckRouter(conn).request(subject, b"{}", None, ack_timeout=3600.0)
        )
        await silent.next_msg(timeout=10.0)  # sent: now only its ack is awaited
        own_nats.kill()
        with pytest.raises(EventsUnavailable, match="connection lost") as lost:
            await asyncio.wait_for(waiting, 30.0)
        assert lost.value.__cause__ is None  # retriable: sent again once reconnected
    finally:
        await conn.close()
