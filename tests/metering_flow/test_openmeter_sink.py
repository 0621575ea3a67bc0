"""The OpenMeter sink against a real HTTP server that answers from a script: batches, the
token, retries with backoff, refusals, and the processor splitting a refused batch."""

import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from kgents.errors import InvalidInput, Unavailable
from kgents.sinks.openmeter import OpenMeterSink
from kgents.store.meter_repo import SqlMeterStore
from kgents.streaming.connection import NatsConnection
from kgents.streaming.usage import JetStreamUsagePublisher
from tests.metering_flow.support import (
    ScriptedEndpoint,
    consumer_idle,
    drain_until,
    free_port,
    processor,
    serving,
    tokens_event,
)

pytestmark = pytest.mark.anyio

TOKEN = "om_secret_token_never_logged_0123456789"


@pytest.fixture
def endpoint() -> Iterator[tuple[ScriptedEndpoint, str]]:
    scripted = ScriptedEndpoint(hang_seconds=1.0)
    with serving(scripted) as url:
        yield scripted, url


@pytest.fixture
async def sink(endpoint: tuple[ScriptedEndpoint, str]) -> AsyncIterator[OpenMeterSink]:
    client = OpenMeterSink(
        endpoint[1] + "/", token=TOKEN, timeout_seconds=0.3, backoff_seconds=0.01
    )
    try:
        yield client
    finally:
        await client.aclose()


async def test_a_batch_is_one_cloudevents_request_with_the_token(
    endpoint: tuple[ScriptedEndpoint, str], sink: OpenMeterSink
) -> None:
    scripted, url = endpoint
    events = [tokens_event("tenant-sink", tokens_in=i) for i in range(3)]
    await sink.send(events)
    [request] = scripted.received
    assert sink.endpoint == f"{url}/api/v1/events"
    assert request.content_type == "application/cloudevents-batch+json"
    assert request.authorization == f"Bearer {TOKEN}"
    assert request.ids == [event.id for event in events]
    first = request.events[0]
    assert first["specversion"] == "1.0" and first["source"] == "kgents-api"
    assert first["type"] == "llm.tokens" and first["subject"] == "tenant-sink"
    assert first["time"] == "2026-03-02T09:30:00.000000Z" and first["data"]["tokens_in"] == 0
    assert TOKEN not in repr(sink)


async def test_503_429_and_timeouts_are_retried_until_accepted(
    endpoint: tuple[ScriptedEndpoint, str], endpoint_token_free_logs: None
) -> None:
    scripted, url = endpoint
    scripted.script.extend(["503", "hang", "429"])
    client = OpenMeterSink(url, token=TOKEN, timeout_seconds=0.3, attempts=4, backoff_seconds=0.01)
    try:
        await client.send([tokens_event("tenant-sink", tokens_in=1)])
    finally:
        await client.aclose()
    assert [request.answer for request in scripted.received] == ["503", "hang", "429", "pass"]


async def test_an_endpoint_that_stays_down_is_unavailable_and_the_token_stays_secret(
    endpoint: tuple[ScriptedEndpoint, str],
    sink: OpenMeterSink,
    endpoint_token_free_logs: None,
) -> None:
    scripted, _ = endpoint
    scripted.script.extend(["503"] * 3)
    with pytest.raises(Unavailable) as raised:
        await sink.send([tokens_event("tenant-sink", tokens_in=1)])
    assert len(scripted.received) == 3  # bounded: a few attempts, then the caller holds
    assert "503" in str(raised.value) and TOKEN not in str(raised.value)
    assert raised.value.code == "openmeter_unavailable"


async def test_a_refused_batch_is_invalid_input_and_a_bad_token_is_not_retried(
    endpoint: tuple[ScriptedEndpoint, str], sink: OpenMeterSink
) -> None:
    scripted, _ = endpoint
    scripted.script.extend(["400", "401"])
    with pytest.raises(InvalidInput, match="injected 400"):
        await sink.send([tokens_event("tenant-sink", tokens_in=1)])
    with pytest.raises(Unavailable, match="401"):
        await sink.send([tokens_event("tenant-sink", tokens_in=1)])
    assert len(scripted.received) == 2  # neither was retried


async def test_an_unreachable_endpoint_is_unavailable_quickly() -> None:
    unreachable = OpenMeterSink(
        f"http://127.0.0.1:{free_port()}", timeout_seconds=0.3, attempts=2, backoff_seconds=0.01
    )
    try:
        with pytest.raises(Unavailable, match="connection failed"):
            await unreachable.send([tokens_event("tenant-sink", tokens_in=1)])
    finally:
        await unreachable.aclose()
    with pytest.raises(InvalidInput):
        OpenMeterSink("ftp://example.invalid")


async def test_the_processor_parks_what_openmeter_refuses_and_forwards_the_rest(
    endpoint: tuple[ScriptedEndpoint, str],
    sink: OpenMeterSink,
    conn: NatsConnection,
    store: SqlMeterStore,
) -> None:
    scripted, _ = endpoint
    scripted.refuse = lambda events: (
        "tokens_in must be below 1000"
        if any(e["data"]["tokens_in"] >= 1000 for e in events)
        else None
    )
    events = [tokens_event("tenant-refused", tokens_in=i) for i in range(5)]
    events.insert(2, tokens_event("tenant-refused", tokens_in=5000))
    await JetStreamUsagePublisher(conn).publish_usage(events)
    metering = processor(conn, store, sink=sink)

    await drain_until(metering, lambda: consumer_idle(conn))

    accepted = [r for r in scripted.received if r.answer == "pass"]
    assert sorted(i for r in accepted for i in r.ids) == sorted(
        e.id for e in events if e.data["tokens_in"] < 1000
    )
    [letter] = await store.dead_letters()
    assert letter.event["id"] == events[2].id
    assert "not forwarded to OpenMeter" in letter.error and "below 1000" in letter.error
    assert await store.event_count() == 6  # counted here all the same
    assert metering.stats.forwarded == 5 and metering.stats.parked == 1


@pytest.fixture
def endpoint_token_free_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)
    yield
    assert TOKEN not in caplog.text
