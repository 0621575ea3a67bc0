"""No follower silences another: resume points are parsed strictly, one past the end of the
stream follows from the end, and every follower is closed when its client leaves, even before
its response started."""

import asyncio
import logging
import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kgents.streaming.connection import NatsConnection
from kgents.streaming.subjects import session_wildcard
from kgents.streaming.topology import EVENTS_STREAM
from tests.conftest import ADMIN_TOKEN
from tests.sse.conftest import BOTH_DATABASES, Live
from tests.sse.test_streaming import stream_turn
from tests.support.sse import SseEvent, read_events
from tests.support.waiting import eventually

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.parametrize("live_database", BOTH_DATABASES, indirect=True),
]


async def follow_until_complete(
    live: Live, session_id: str, headers: dict[str, str]
) -> list[SseEvent]:
    got: list[SseEvent] = []
    async with live.client.stream(
        "GET", f"/v1/kgent/sessions/{session_id}/events", headers={**live.headers, **headers}
    ) as response:
        assert response.status_code == 200
        async for event in read_events(response):
            got.append(event)
            if event.event == "complete":
                break
    return got


async def test_a_resume_point_past_the_end_follows_from_the_end(live: Live) -> None:
    session_id = await live.new_session()
    await stream_turn(live, session_id, "First")
    opened = asyncio.Event()

    async def follow(headers: dict[str, str]) -> list[SseEvent]:
        got: list[SseEvent] = []
        async with live.client.stream(
            "GET", f"/v1/kgent/sessions/{session_id}/events", headers={**live.headers, **headers}
        ) as response:
            assert response.status_code == 200
            opened.set()
            async for event in read_events(response):
                got.append(event)
                if event.event == "complete":
                    break
        return got

    ahead = asyncio.create_task(follow({"Last-Event-ID": "99999999999"}))
    await asyncio.wait_for(opened.wait(), 10)  # its follower is open (and first) now
    opened.clear()
    normal = asyncio.create_task(follow({}))
    await asyncio.wait_for(opened.wait(), 10)
    posted = await asyncio.wait_for(stream_turn(live, session_id, "Second"), 30)
    ids = [event.id for event in posted]
    assert posted[-1].event == "complete" and None not in ids, ids
    chunks = [event for event in posted if event.event == "chunk"]
    assert len(chunks) == posted[-1].data["chunks"] > 0
    for follower in (normal, ahead):
        got = await asyncio.wait_for(follower, 30)
        assert [event.id for event in got] == ids


async def test_resume_points_are_parsed_strictly(live: Live) -> None:
    session_id = await live.new_session()
    path = f"/v1/kgent/sessions/{session_id}/events"
    refused: list[tuple[dict[str, str | bytes], str]] = [
        ({"Last-Event-ID": "²".encode("latin-1")}, ""),  # a digit to str.isdigit(), not int()
        ({"Last-Event-ID": "abc"}, ""),
        ({"Last-Event-ID": "-1"}, ""),
        ({"Last-Event-ID": "+5"}, ""),
        ({"Last-Event-ID": "5 6"}, ""),
        ({"Last-Event-ID": "9223372036854775808"}, ""),
        ({"Last-Event-ID": "18446744073709551615"}, ""),
        ({}, "after=18446744073709551615"),
        ({}, "after=9223372036854775808"),
        ({}, "after=-5"),
        ({}, "after=1e3"),
        ({}, "after=%C2%B2"),
    ]
    for headers, query in refused:
        response = await live.client.get(f"{path}?{query}", headers={**live.headers, **headers})
        assert response.status_code == 400, (headers, query, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_resume_point"
        assert "unmarshal" not in error["message"] and "nats" not in error["message"].lower()
    response = await live.client.get(f"{path}?from=yesterday", headers=live.headers)
    assert response.status_code == 422
    # The largest accepted one is past the end: it follows from there.
    async with live.client.stream(
        "GET", f"{path}?after=9223372036854775807", headers=live.headers
    ) as response:
        assert response.status_code == 200


async def scrape(live: Live) -> dict[tuple[str, str], float]:
    """Every sample of ``/metrics`` by name and route label ("" when it has none)."""
    response = await live.client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    samples: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, sample.labels.get("route", ""))
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


EVENTS_ROUTE = "/v1/kgent/sessions/{session_id}/events"


async def test_followers_whose_clients_leave_at_once_are_closed(
    live: Live, nats_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """20 followers whose clients go away 3 ms after asking: once the 20 requests are over,
    their consumers and readers are soon gone, and each is logged as a disconnect."""
    caplog.set_level(logging.INFO)
    session_id = await live.new_session()
    await stream_turn(live, session_id, "Something to replay")
    host, port = live.base_url.removeprefix("http://").split(":")

    async def abort(n: int) -> None:
        sock = socket.create_connection((host, int(port)))
        query = "?from=start" if n % 2 else ""
        request = (
            f"GET {EVENTS_ROUTE.format(session_id=session_id)}{query} HTTP/1.1\r\n"
            f"Host: {host}\r\nX-API-Key: {live.key}\r\nAccept: text/event-stream\r\n\r\n"
        )
        sock.sendall(request.encode())
        await asyncio.sleep(0.003)
        sock.close()

    before = (await scrape(live)).get(("kgents_http_requests_total", EVENTS_ROUTE), 0)
    await asyncio.gather(*(abort(n) for n in range(20)))

    async def answered() -> bool:
        scraped = await scrape(live)
        return scraped.get(("kgents_http_requests_total", EVENTS_ROUTE), 0) - before >= 20

    await eventually(answered, seconds=15, every=0.1)
    conn = await NatsConnection.connect(nats_url, connect_timeout=5.0)
    try:

        async def all_closed() -> bool:
            infos = await conn.js.consumers_info(EVENTS_STREAM)
            subject = session_wildcard(session_id)
            consumers = [i for i in infos if i.config.filter_subject == subject]
            scraped = await scrape(live)
            readers = [
                scraped[(name, "")]
                for name in (
                    "kgents_follow_feeds",
                    "kgents_followers_open",
                    "kgents_follow_private_readers",
                )
            ]
            return not consumers and readers == [0, 0, 0]

        await eventually(all_closed, seconds=10, every=0.2)
    finally:
        await conn.close()
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "kgents.access" and EVENTS_ROUTE in r.getMessage()
    ]
    assert len(lines) == 20 and not [line for line in lines if " 500" in line], lines
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
