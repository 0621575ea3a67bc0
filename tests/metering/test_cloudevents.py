"""Checking ingested CloudEvents: every problem named by event and field, in event order."""

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from kgents.errors import InvalidInput
from kgents.metering.cloudevents import MAX_BATCH, MAX_DATA_DEPTH, decode_events, parse_events

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
        decode_events(body)

    assert refused.value.code == "invalid_json"
