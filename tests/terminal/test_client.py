"""``kgents.client`` against a real server: sessions, streamed turns, follow, cancel, and
resuming a stream whose TCP connection is cut mid-reply (through a proxy the test cuts)."""

import threading

import pytest

from kgents.client import (
    ApiError,
    KgentsClient,
    RetryPolicy,
    StreamEvent,
    StreamLost,
    Unreachable,
)
from kgents.llm.demo import compose_reply
from tests.support.sse import assert_every_token_once
from tests.terminal.conftest import Server
from tests.terminal.proxy import cutting_proxy

REFLECT = 0.4


@pytest.fixture
def token_delay_ms() -> int:
    return 20


def expected_reply(message: str, temperature: float = REFLECT) -> str:
    words = compose_reply(message, temperature)
    return words[0] + "".join(f" {word}" for word in words[1:])


def assert_whole_turn(events: list[StreamEvent], reply: str) -> None:
    """One user_message, every chunk once and in order, one end event; ids strictly rising."""
    assert events[0].type == "user_message" and events[-1].type == "complete"
    chunks = [event for event in events if event.type == "chunk"]
    assert_every_token_once(
        [chunk.data["index"] for chunk in chunks], [chunk.data["text"] for chunk in chunks], reply
    )
    ids = [event.id for event in events]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(set(ids))


def test_session_turn_and_follow(server: Server) -> None:
    with KgentsClient(server.url, server.key) as client:
        session = client.create_session(title="plans", mode="advise")
        assert session.mode == "advise" and session.title == "plans"
        turn = client.send(session.id, "What first?", mode="advise")
        events = list(turn)
        reply = expected_reply("What first?", 0.5)
        assert_whole_turn(events, reply)
        assert turn.result is not None and turn.result.status == "complete"
        assert turn.result.text == reply and turn.result.tokens_out == len(reply.split())
        assert turn.reconnects == 0
        assert client.get_session(session.id).message_count == 2

        # Following from the start replays the same events, with the same ids.
        follow = client.follow(session.id, from_start=True)
        replayed = []
        for event in follow:
            replayed.append(event)
            if event.type == "complete":
                break
        follow.close()
        assert replayed == events


def test_errors_carry_the_api_code_and_message(server: Server) -> None:
    with KgentsClient(server.url, "kg_live_" + "x" * 32) as client:
        with pytest.raises(ApiError) as bad_key:
            client.create_session()
    assert bad_key.value.status == 401 and bad_key.value.code == "unauthorized"
    with KgentsClient(server.url, server.key) as client:
        with pytest.raises(ApiError) as missing:
            list(client.send("ses_missing", "hello"))
        assert missing.value.status == 404
        session = client.create_session()
        with pytest.raises(ApiError) as budget:
            list(client.send(session.id, "hello", budget="deep"))  # above the pro plan
        assert budget.value.code == "budget_not_allowed"
        assert client.cancel(session.id) is False  # nothing runs: 409 is not an error here
        assert client.usage()["tenant_id"] == server.tenant_id
    with KgentsClient("http://127.0.0.1:9", server.key) as client:
        with pytest.raises(Unreachable):
            client.create_session()


def test_cancel_stops_a_running_turn(server: Server) -> None:
    with KgentsClient(server.url, server.key) as client:
        session = client.create_session()
        turn = client.send(session.id, "a long answer please")
        cancelled = False
        for event in turn:
            if event.type == "chunk" and event.data["index"] >= 2 and not cancelled:
                cancelled = client.cancel(session.id)
                assert cancelled
        assert turn.result is not None and turn.result.status == "cancelled"
        assert turn.result.error_code == "cancelled" and turn.result.text


def test_turn_resumes_after_the_connection_is_cut_mid_reply(server: Server) -> None:
    reconnected_after: list[int | None] = []
    with cutting_proxy(server.url) as proxy:
        # Cut inside the frame of chunk 5: the client holds half a frame when it drops.
        proxy.cut_at(b'"index":5}', keep=3)
        with KgentsClient(proxy.url, server.key, on_reconnect=reconnected_after.append) as client:
            session = client.create_session()
            turn = client.send(session.id, "resume me")
            events = list(turn)
    assert proxy.cuts == 1 and turn.reconnects == 1
    chunk_4 = next(e for e in events if e.type == "chunk" and e.data["index"] == 4)
    assert reconnected_after == [chunk_4.id]
    reply = expected_reply("resume me")
    assert_whole_turn(events, reply)
    assert turn.result is not None and turn.result.text == reply


def test_turn_resumes_when_cut_before_its_first_event(server: Server) -> None:
    with cutting_proxy(server.url) as proxy:
        with KgentsClient(proxy.url, server.key) as client:
            session = client.create_session()
            list(client.send(session.id, "an earlier turn"))
            turn = client.send(session.id, "cut at once")
            proxy.cut_at(b"event: user_message")
            events = list(turn)
    assert proxy.cuts == 1 and turn.reconnects == 1
    assert_whole_turn(events, expected_reply("cut at once"))
    assert events[0].data["content"] == "cut at once"


def test_gives_up_after_the_retry_budget(server: Server) -> None:
    with cutting_proxy(server.url) as proxy:
        client = KgentsClient(
            proxy.url, server.key, retry=RetryPolicy(attempts=2, backoff_seconds=0.01)
        )
        session = client.create_session()
        turn = client.send(session.id, "into the void")
        events: list[StreamEvent] = []
        stop = threading.Event()
        with pytest.raises(StreamLost) as lost:
            for event in turn:
                events.append(event)
                if event.type == "chunk" and not stop.is_set():
                    stop.set()
                    proxy.close()  # the server is gone for good
        client.close()
    assert lost.value.last_event_id == events[-1].id
