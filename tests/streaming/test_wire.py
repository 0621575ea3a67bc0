"""Encoding on the wire: JSON bodies, dedupe headers, RFC 3339 UTC times with ``Z``."""

import json
from datetime import UTC, datetime

import pytest

from kgents.clock import utc_now
from kgents.errors import InvalidInput
from kgents.metering import cloudevents
from kgents.metering import events as usage_events
from kgents.sessions.ports import SessionEvent
from kgents.streaming.wire import (
    MSG_ID_HEADER,
    decode_session_event,
    encode_session_event,
    encode_usage_event,
    parse_rfc3339,
)

AT = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def test_session_event_round_trip() -> None:
    event = SessionEvent(
        session_id="ses_1", type="chunk", data={"text": "héllo", "index": 0}, msg_id="turn_1:0"
    )
    wire = encode_session_event(event, at=AT)
    assert wire.subject == "kgent.session.ses_1.chunk"
    assert wire.headers == {MSG_ID_HEADER: "turn_1:0"}
    body = json.loads(wire.payload)
    assert body == {
        "type": "chunk",
        "session_id": "ses_1",
        "time": "2026-01-02T03:04:05.123456Z",
        "data": {"text": "héllo", "index": 0},
    }
    received = decode_session_event(
        seq=7, subject=wire.subject, payload=wire.payload, headers=wire.headers
    )
    assert received is not None
    assert received.seq == 7
    assert received.event == event
    assert received.time == AT


def test_an_event_is_stamped_with_the_time_it_is_encoded() -> None:
    before = utc_now()
    wire = encode_session_event(SessionEvent(session_id="ses_1", type="complete"))
    after = utc_now()
    stamped = json.loads(wire.payload)["time"]
    time = parse_rfc3339(stamped)
    assert time is not None
    assert before <= time <= after
    assert stamped == cloudevents.format_time(time)  # microseconds and a Z, as everywhere


def test_no_msg_id_no_header() -> None:
    wire = encode_session_event(SessionEvent(session_id="ses_1", type="complete"))
    assert wire.headers is None


@pytest.mark.parametrize("msg_id", ["", "a\r\nNats-Msg-Id: b", "x" * 257, "a\nb"])
def test_hostile_msg_ids_are_refused(msg_id: str) -> None:
    with pytest.raises(InvalidInput):
        encode_session_event(SessionEvent(session_id="ses_1", type="chunk", msg_id=msg_id))


def test_unknown_event_type_is_refused() -> None:
    with pytest.raises(InvalidInput):
        encode_session_event(SessionEvent(session_id="ses_1", type="bogus"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("subject", "payload"),
    [
        ("kgent.session.ses_1.chunk", b"not json"),
        ("kgent.session.ses_1.chunk", b'{"type": "complete", "data": {}}'),
        ("kgent.session.ses_1.bogus", b'{"type": "bogus", "data": {}}'),
        ("kgent.session.ses_1.chunk", b'{"type": "chunk", "data": [1]}'),
        ("kgent.usage.llm.tokens", b'{"type": "chunk", "data": {}}'),
    ],
)
def test_foreign_messages_decode_to_none(subject: str, payload: bytes) -> None:
    assert decode_session_event(seq=1, subject=subject, payload=payload, headers=None) is None


def test_usage_event_is_a_cloudevent() -> None:
    event = usage_events.llm_tokens(
        tenant_id="ten_1",
        session_id="ses_1",
        turn_id="turn_1",
        tokens_in=3,
        tokens_out=5,
        model="demo",
        estimated=False,
        at=AT,
    )
    wire = encode_usage_event(event)
    assert wire.subject == "kgent.usage.llm.tokens"
    assert wire.headers == {MSG_ID_HEADER: f"kgents-api:{event.id}"}
    body = json.loads(wire.payload)
    assert body["specversion"] == "1.0"
    assert body["id"] == event.id
    assert body["source"] == "kgents-api"
    assert body["type"] == "llm.tokens"
    assert body["subject"] == "ten_1"
    assert body["time"] == "2026-01-02T03:04:05.123456Z"
    assert body["data"]["tokens_out"] == 5
