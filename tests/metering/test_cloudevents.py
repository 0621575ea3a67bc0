"""The CloudEvents codec: one encoding; ingested events checked with every problem named by
event and field, in event order; the same rules for one event read anywhere else."""

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from kgents.errors import InvalidInput
from kgents.metering.cloudevents import (
    MAX_BATCH,
    MAX_DATA_DEPTH,
    decode_event,
    encode,
    encode_batch,
    format_time,
    load_json,
    parse_events,
)
from kgents.metering.relay import StoredUsageEvent
from kgents.records import UsageEvent
from kgents.store.outbox_sql import stored_time_rfc3339

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def event(index: int, **fields: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e{index}",
        "source": "tests",
        "type": "llm.tokens",
        "subject": "ten_1",
        "time": "2026-03-01T11:59:00Z",
        "data": {"tokens_in": index},
        **fields,
    }


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_a_valid_batch_becomes_events_and_the_first_of_a_duplicate_wins() -> None:
    items = [event(0), event(1), event(0, data={"tokens_in": 99}), event(2, time=None)]

    events, problems = parse_events(items, now=NOW)

    assert problems == []
    assert [(e.id, e.data["tokens_in"]) for e in events] == [("e0", 0), ("e1", 1), ("e2", 2)]
    assert events[0].time == datetime(2026, 3, 1, 11, 59, tzinfo=UTC)
    assert events[2].time == NOW


def test_data_problems_are_named_per_event_among_other_problems_in_event_order() -> None:
    infinite = json.loads('{"tokens_in": 1e999}')
    items = [
        event(0),
        event(1, type="bad type", data=infinite),
        event(2, data={"ok": nested(MAX_DATA_DEPTH)}),  # one level deeper than allowed
        event(3, data={"text": "\ud800"}),
        event(4, data=nested(MAX_DATA_DEPTH)),
    ]

    events, problems = parse_events(items, now=NOW)

    assert events == []
    assert [(p.index, p.field) for p in problems] == [
        (1, "events[1].type"),
        (1, "events[1].data"),
        (2, "events[2].data"),
        (3, "events[3].data"),
    ]
    assert problems[1].message == "must be plain JSON"
    assert "nest deeper" in problems[2].message
    assert "lone surrogates" in problems[3].message
    assert problems[0].wire() == {
        "index": 1,
        "field": "events[1].type",
        "message": problems[0].message,
    }


def test_a_batch_over_the_limit_is_refused_whole() -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_events([event(n) for n in range(MAX_BATCH + 1)], now=NOW)

    assert refused.value.code == "batch_too_large"


@pytest.mark.parametrize("body", [b"{", b'{"a": NaN}', b"[Infinity]"])
def test_a_body_that_is_not_json_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidInput) as refused:
        load_json(body)

    assert refused.value.code == "invalid_json"


# -- the one codec: what every part encodes and decodes -----------------------------------

AN_EVENT = UsageEvent(
    id="evt-ü",
    source="kgents-api",
    type="llm.tokens",
    subject="ten_1",
    time=datetime(2026, 3, 1, 13, 0, tzinfo=timezone(timedelta(hours=1))),
    data={"tokens_in": 3, "text": 'quote " and \u2028', "nested": {"a": [1, 2.5, None]}},
)


def test_an_event_and_its_outbox_row_encode_alike_and_decode_back() -> None:
    row = StoredUsageEvent(
        source=AN_EVENT.source,
        id=AN_EVENT.id,
        type=AN_EVENT.type,
        subject=AN_EVENT.subject,
        time=format_time(AN_EVENT.time),
        data_json=json.dumps(AN_EVENT.data, ensure_ascii=False, separators=(",", ":")),
    )
    assert encode(row) == encode(AN_EVENT)
    body = load_json(encode(AN_EVENT))
    assert body == {
        "specversion": "1.0",
        "id": "evt-ü",
        "source": "kgents-api",
        "type": "llm.tokens",
        "subject": "ten_1",
        "time": "2026-03-01T12:00:00.000000Z",
        "datacontenttype": "application/json",
        "data": AN_EVENT.data,
    }
    assert decode_event(body, default_time=NOW) == replace(AN_EVENT, time=AN_EVENT.time)
    assert load_json(encode_batch([AN_EVENT, AN_EVENT])) == [body, body]


def test_one_time_format() -> None:
    assert format_time(datetime(2026, 1, 2, 5, 0, tzinfo=timezone(timedelta(hours=2)))) == (
        "2026-01-02T03:00:00.000000Z"
    )
    at = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    assert format_time(at) == "2026-01-02T03:04:05.000006Z"
    # An outbox row's time as SQLite and PostgreSQL return it becomes the same text.
    assert stored_time_rfc3339("2026-01-02 03:04:05.000006") == format_time(at)
    assert stored_time_rfc3339(at.astimezone(timezone(timedelta(hours=-5)))) == format_time(at)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"specversion": None}, "specversion: is required"),
        ({"specversion": "0.3"}, 'specversion: must be "1.0"'),
        ({"time": "2026-03-01T11:59:00"}, "time: must be an RFC 3339 date-time with an offset"),
        ({"time": "2026-03-01"}, "time: must be an RFC 3339 date-time with an offset"),
        ({"data": [1]}, "data: must be a JSON object"),
        ({"type": "llm.*"}, "type: must be dot-separated parts"),
    ],
)
def test_decoding_one_event_applies_the_rules_of_ingest(
    change: dict[str, Any], problem: str
) -> None:
    """The consumer and dead-letter replay decode with these rules: they once took a time
    without an offset as UTC, or an event without a specversion, that ingest refused."""
    body = {key: value for key, value in {**event(0), **change}.items() if value is not None}
    with pytest.raises(InvalidInput, match=re.escape(problem)):
        decode_event(body, default_time=NOW)
    assert parse_events([body], now=NOW)[1]  # and ingest refuses it too


def test_an_event_without_time_takes_the_default() -> None:
    body = {key: value for key, value in event(0).items() if key != "time"}
    assert decode_event(body, default_time=NOW).time == NOW


@pytest.mark.parametrize(
    "data", [{"x": float("nan")}, {"x": "\udfff"}, {"x": object()}], ids=["nan", "surrogate", "obj"]
)
def test_what_is_not_json_is_not_encoded(data: dict[str, Any]) -> None:
    with pytest.raises(InvalidInput):
        encode(replace(AN_EVENT, data=data))


def test_nul_in_data_is_refused_but_an_escaped_backslash_is_not() -> None:
    nul = event(0, data={"note": "a\u0000b"})
    backslash = event(1, data={"note": "a\\u0000b"})  # a backslash, then "u0000"
    events, problems = parse_events([nul, backslash], now=NOW)
    assert events == []
    assert [(p.field, p.message) for p in problems] == [
        ("events[0].data", "must not contain NUL characters (\\u0000)")
    ]
    assert len(parse_events([backslash], now=NOW)[0]) == 1
