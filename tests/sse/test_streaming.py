"""Real SSE over a real server: token-by-token delivery, resume, fan-out, cancel, conflicts."""

import asyncio
import time

import pytest

from tests.sse.conftest import Live
from tests.support.sse import SseEvent, assert_every_token_once, read_events
from tests.support.waiting import eventually

pytestmark = pytest.mark.anyio


async def stream_turn(live: Live, session_id: str, message: str = "Tell me more") -> list[SseEvent]:
    events = []
    async with live.client.stream(
        "POST",
        f"/v1/kgent/sessions/{session_id}/messages",
        json={"message": message},
        headers=live.headers,
    ) as response:
        assert response.status_code == 200
        async for event in read_events(response):
            events.append(event)
    return events


async def test_reply_streams_token_by_token(live: Live) -> None:
    session_id = await live.new_session()
    arrivals: list[tuple[float, SseEvent]] = []
    async with live.client.stream(
        "POST",
        f"/v1/kgent/sessions/{session_id}/messages",
        json={"message": "How do I start?"},
        headers=live.headers,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        async for event in read_events(response):
            arrivals.append((time.monotonic(), event))
    kinds = [event.event for _, event in arrivals]
    assert kinds[0] == "user_message" and kinds[-1] == "complete"
    chunks = [event for _, event in arrivals if event.event == "chunk"]
    complete = arrivals[-1][1].data
    assert 40 <= complete["tokens_out"] <= 120
    assert_every_token_once(
        [c.data["index"] for c in chunks], [c.data["text"] for c in chunks], complete["text"]
    )
    ids = [event.id for _, event in arrivals]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(ids)
    assert complete["chunks"] == len(chunks) and chunks[-1].data["index"] < complete["tokens_out"]
    first_chunk_at = next(t for t, e in arrivals if e.event == "chunk")
    # With 40 ms between tokens the reply takes 1.6 s or more: the first chunk must come
    # long before the last, or the server re-chunked a finished text.
    assert arrivals[-1][0] - first_chunk_at > 1.0


async def test_each_turn_streams_exactly_its_own_events(live: Live) -> None:
    # The POST's follower opens while the turn is stored (only new events, older ones
    # skipped): each stream is its turn's events, from its user message, nothing else.
    session_id = await live.new_session()
    first = await stream_turn(live, session_id, "First")
    second = await stream_turn(live, session_id, "Second")
    for events in (first, second):
        kinds = [e.event for e in events]
        assert kinds[0] == "user_message" and kinds[-1] == "complete"
        assert len({e.data["turn_id"] for e in events}) == 1
        chunks = [e for e in events if e.event == "chunk"]
        assert_every_token_once(
            [c.data["index"] for c in chunks],
            [c.data["text"] for c in chunks],
            events[-1].data["text"],
        )
    assert first[0].data["content"] == "First" and second[0].data["content"] == "Second"
    assert first[0].data["turn_id"] != second[0].data["turn_id"]
    assert first[-1].id is not None and second[0].id is not None
    assert second[0].id > first[-1].id
    replayed = []
    async with live.client.stream(
        "GET", f"/v1/kgent/sessions/{session_id}/events?from=start", headers=live.headers
    ) as response:
        async for event in read_events(response):
            replayed.append(event)
            if len(replayed) == len(first) + len(second):
                break
    assert [e.id for e in replayed] == [e.id for e in first + second]


async def test_resume_after_disconnect_returns_exactly_the_missing_events(live: Live) -> None:
    session_id = await live.new_session()
    seen: list[SseEvent] = []
    async with live.client.stream(
        "POST",
        f"/v1/kgent/sessions/{session_id}/messages",
        json={"message": "resume me"},
        headers=live.headers,
    ) as response:
        async for event in read_events(response):
            seen.append(event)
            if event.event == "chunk" and event.data["index"] >= 4:
                break  # the client drops mid-turn
    last_id = seen[-1].id
    rest: list[SseEvent] = []
    async with live.client.stream(
        "GET",
        f"/v1/kgent/sessions/{session_id}/events",
        headers={**live.headers, "Last-Event-ID": str(last_id)},
    ) as response:
        assert response.status_code == 200
        async for event in read_events(response):
            rest.append(event)
            if event.event in ("complete", "error"):
                break
    everything = seen + rest
    ids = [e.id for e in everything]
    assert len(ids) == len(set(ids)), "no duplicates"
    assert ids == sorted(ids)
    chunks = [e for e in everything if e.event == "chunk"]
    assert rest[-1].event == "complete"
    assert_every_token_once(
        [c.data["index"] for c in chunks], [c.data["text"] for c in chunks], rest[-1].data["text"]
    )


async def test_resume_with_after_query_and_replay_from_start(live: Live) -> None:
    session_id = await live.new_session()
    original = await stream_turn(live, session_id)
    middle = original[len(original) // 2]

    async def replay(query: str) -> list[SseEvent]:
        got: list[SseEvent] = []
        async with live.client.stream(
            "GET", f"/v1/kgent/sessions/{session_id}/events?{query}", headers=live.headers
        ) as response:
            async for event in read_events(response):
                got.append(event)
                if event.event == "complete":
                    break
        return got

    assert [e.id for e in await replay(f"after={middle.id}")] == [
        e.id for e in original if e.id is not None and middle.id is not None and e.id > middle.id
    ]
    # The POST's own stream is served in process: a replay from JetStream is the same events
    # with the same ids.
    from_start = await replay("from=start")
    assert [(e.id, e.event, e.data) for e in from_start] == [
        (e.id, e.event, e.data) for e in original
    ]


async def test_many_followers_each_receive_every_event_in_order(live: Live) -> None:
    session_id = await live.new_session()
    ready = asyncio.Barrier(4)

    async def follow() -> list[SseEvent]:
        got: list[SseEvent] = []
        async with live.client.stream(
            "GET", f"/v1/kgent/sessions/{session_id}/events", headers=live.headers
        ) as response:
            await ready.wait()
            async for event in read_events(response):
                got.append(event)
                if event.event == "complete":
                    break
        return got

    followers = [asyncio.create_task(follow()) for _ in range(3)]
    await ready.wait()
    await asyncio.sleep(0.2)  # the followers' consumers exist before the turn starts
    posted = await stream_turn(live, session_id)
    results = await asyncio.wait_for(asyncio.gather(*followers), timeout=30)
    for got in results:
        assert [e.id for e in got] == [e.id for e in posted]


async def test_disconnect_does_not_stop_the_generation(live: Live) -> None:
    session_id = await live.new_session()
    async with live.client.stream(
        "POST",
        f"/v1/kgent/sessions/{session_id}/messages",
        json={"message": "keep going without me"},
        headers=live.headers,
    ) as response:
        async for event in read_events(response):
            if event.event == "chunk":
                break

    async def saved() -> bool:
        messages = await live.client.get(
            f"/v1/kgent/sessions/{session_id}/messages", headers=live.headers
        )
        return messages.json()["total"] == 2

    await eventually(saved, seconds=20)
    session = (
        await live.client.get(f"/v1/kgent/sessions/{session_id}", headers=live.headers)
    ).json()
    assert session["tokens_used"] > 0


async def test_second_message_while_running_is_409_and_cancel_stops_the_turn(live: Live) -> None:
    session_id = await live.new_session()
    events: list[SseEvent] = []
    cancelled = False
    async with live.client.stream(
        "POST",
        f"/v1/kgent/sessions/{session_id}/messages",
        json={"message": "a long answer please"},
        headers=live.headers,
    ) as response:
        async for event in read_events(response):
            events.append(event)
            if event.event == "chunk" and event.data["index"] >= 2 and not cancelled:
                busy = await live.client.post(
                    f"/v1/kgent/sessions/{session_id}/messages",
                    json={"message": "me too", "stream": False},
                    headers=live.headers,
                )
                assert busy.status_code == 409
                assert busy.json()["error"]["code"] == "turn_in_progress"
                cancel = await live.client.post(
                    f"/v1/kgent/sessions/{session_id}/cancel", headers=live.headers
                )
                assert cancel.status_code == 200
                assert cancel.json()["status"] == "cancelling"
                cancelled = True
    assert events[-1].event == "error"
    assert events[-1].data["error"]["code"] == "cancelled"
    partial = "".join(e.data["text"] for e in events if e.event == "chunk")
    messages = (
        await live.client.get(f"/v1/kgent/sessions/{session_id}/messages", headers=live.headers)
    ).json()["messages"]
    assert messages[-1]["role"] == "assistant" and messages[-1]["content"] == partial
    assert (messages[-1]["status"], messages[-1]["error_code"]) == ("cancelled", "cancelled")
    assert messages[-1]["turn_id"] == messages[-2]["turn_id"] == events[0].data["turn_id"]
    nothing = await live.client.post(
        f"/v1/kgent/sessions/{session_id}/cancel", headers=live.headers
    )
    assert nothing.status_code == 409
    assert nothing.json()["error"]["code"] == "no_turn_running"
    # The session takes new messages again.
    again = await stream_turn(live, session_id, "and now?")
    assert again[-1].event == "complete"


async def test_bad_resume_positions(live: Live) -> None:
    session_id = await live.new_session()
    for headers, query in [
        ({"Last-Event-ID": "abc"}, ""),
        ({"Last-Event-ID": "-1"}, ""),
        ({}, "after=-5"),
        ({}, "from=yesterday"),
    ]:
        response = await live.client.get(
            f"/v1/kgent/sessions/{session_id}/events?{query}", headers={**live.headers, **headers}
        )
        assert response.status_code == (422 if query.startswith("from") else 400), query


async def test_a_client_that_reads_nothing_does_not_slow_the_generation(live: Live) -> None:
    session_id = await live.new_session()
    host, port = live.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = b'{"message": "' + b"slow reader " * 200 + b'"}'
    writer.write(
        f"POST /v1/kgent/sessions/{session_id}/messages HTTP/1.1\r\n"
        f"Host: {host}\r\nX-API-Key: {live.key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    try:
        # The client never reads. The turn still completes at the provider's pace.
        async def complete() -> bool:
            messages = await live.client.get(
                f"/v1/kgent/sessions/{session_id}/messages", headers=live.headers
            )
            return messages.json()["total"] == 2

        await eventually(complete, seconds=15)
    finally:
        writer.close()
        await writer.wait_closed()
    del reader


async def test_the_history_names_the_running_turn_and_where_to_follow_it(live: Live) -> None:
    session_id = await live.new_session()
    path = f"/v1/kgent/sessions/{session_id}/messages"
    idle = (await live.client.get(path, headers=live.headers)).json()
    assert idle["running_turn"] is None
    async with live.client.stream(
        "POST", path, json={"message": "a long answer please"}, headers=live.headers
    ) as response:
        posted = []
        async for event in read_events(response):
            posted.append(event)
            if event.event == "chunk" and event.data["index"] >= 3:
                break  # the client goes away; the turn runs on
    turn_id = posted[0].data["turn_id"]

    async def position_known() -> bool:
        running = (await live.client.get(path, headers=live.headers)).json()["running_turn"]
        return running is not None and running["events_after"] is not None

    await eventually(position_known)
    history = (await live.client.get(path, headers=live.headers)).json()
    assert history["running_turn"]["id"] == turn_id
    assert history["messages"][-1]["status"] == "running"
    assert history["messages"][-1]["turn_id"] == turn_id
    after = history["running_turn"]["events_after"]
    assert after == posted[0].id - 1

    # Following from there gives the whole turn from its first event, then live, to its end.
    followed = []
    async with live.client.stream(
        "GET", f"/v1/kgent/sessions/{session_id}/events?after={after}", headers=live.headers
    ) as response:
        async for event in read_events(response):
            followed.append(event)
            if event.event in ("complete", "error"):
                break
    assert followed[0].event == "user_message" and followed[0].data["turn_id"] == turn_id
    assert followed[-1].event == "complete"
    chunks = [e for e in followed if e.event == "chunk"]
    assert_every_token_once(
        [c.data["index"] for c in chunks],
        [c.data["text"] for c in chunks],
        followed[-1].data["text"],
    )
    done = (await live.client.get(path, headers=live.headers)).json()
    assert done["running_turn"] is None and done["messages"][-1]["status"] == "complete"
