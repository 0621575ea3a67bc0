"""CloudEvents 1.0 in JSON: the one codec of usage events, wherever they cross a boundary
(``POST /api/v1/events``, the outbox relay, the platform's own events, the metering consumer,
dead letters, forwarding to OpenMeter).

Encoding (``encode``, ``encode_batch``): ``specversion`` ``1.0``, ``datacontenttype``
``application/json``, ``time`` RFC 3339 in UTC with microseconds and ``Z`` (``format_time``).

Decoding (``load_json`` for a body, then ``parse_events`` for a batch, naming every problem, or
``decode_event`` for one, raising the first) checks what the pipeline needs, not only the
CloudEvents shape:

- ``specversion`` is ``"1.0"``; ``id``, ``source`` and ``subject`` are non-empty strings of at
  most 256 characters, without control characters, in valid Unicode; ``source`` and ``id``
  together are at most 255 characters (the JetStream dedupe id);
- ``type`` is dot-separated ``[A-Za-z0-9_-]`` parts, at most 128 characters (it becomes the
  NATS subject ``kgent.usage.<type>``);
- ``time`` is RFC 3339 with an offset, within the meter store's years (missing: a default the
  caller gives: now, or the stream's publish time);
- ``datacontenttype`` is JSON if given; ``data`` is an object (missing or null: ``{}``) of
  plain JSON, valid Unicode without NUL, at most ``MAX_DATA_DEPTH`` levels deep.

Extension attributes are accepted and not kept. A batch is all-or-nothing: ``parse_events``
returns either every event or every problem found.
"""

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kgents.clock import as_utc
from kgents.errors import InvalidInput
from kgents.metering.relay import StoredUsageEvent
from kgents.metering.rollup import EARLIEST, LATEST
from kgents.records import UsageEvent

SPECVERSION = "1.0"
MAX_BATCH = 1000
"""Events per ingest request; a larger batch is refused whole."""
MAX_DATA_DEPTH = 64
JSON_CONTENT_TYPE = "application/json"

_TYPE_PART = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_LIMITS = {"id": 256, "source": 256, "subject": 256}
_TIME_FORMAT = "must be an RFC 3339 date-time with an offset, like 2026-01-02T03:04:05Z"
# One encoder and one decoder object for every event: ``json.dumps``/``json.loads`` with
# options build a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_BODY = (
    '{"specversion":"1.0","id":%s,"source":%s,"type":%s,"subject":%s,"time":"%s",'
    '"datacontenttype":"application/json","data":%s}'
)


# -- encoding ------------------------------------------------------------------------------


def format_time(value: datetime) -> str:
    """``value`` as RFC 3339 in UTC with microseconds and a ``Z`` (naive values are UTC)."""
    utc = value if value.tzinfo is UTC else as_utc(value)
    return utc.isoformat(timespec="microseconds")[:-6] + "Z"


def encode(event: UsageEvent | StoredUsageEvent) -> bytes:
    """``event`` as a CloudEvents JSON object. An outbox row (``StoredUsageEvent``) goes out
    as stored: its ``data`` is JSON text already and its ``time`` RFC 3339 text
    (``format_time``'s), so nothing is decoded and encoded again. ``InvalidInput`` when
    ``data`` is not plain JSON in valid Unicode."""
    if isinstance(event, StoredUsageEvent):
        time, data = event.time, event.data_json
    else:
        time, data = format_time(event.time), _json(event.data)
    body = _BODY % (
        _ENCODER.encode(event.id),
        _ENCODER.encode(event.source),
        _ENCODER.encode(event.type),
        _ENCODER.encode(event.subject),
        time,
        data,
    )
    try:
        return body.encode()
    except UnicodeEncodeError:
        raise InvalidInput("a usage event must be valid Unicode") from None


def encode_batch(events: Iterable[UsageEvent]) -> bytes:
    """``events`` as one CloudEvents batch (a JSON array)."""
    return b"[" + b",".join(encode(event) for event in events) + b"]"


def _json(data: dict[str, Any]) -> str:
    try:
        return _ENCODER.encode(data)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"usage event data is not plain JSON ({exc})") from exc


# -- decoding ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventProblem:
    """What is wrong with one event: ``field`` is ``events[i]`` or ``events[i].name``."""

    index: int
    field: str
    message: str

    def wire(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "message": self.message}


def load_json(body: bytes) -> Any:
    """The JSON document of a body (a request's, a message's); ``InvalidInput`` when it is not
    UTF-8 JSON (NaN and infinities are not JSON either). A byte order mark is skipped."""
    try:
        return _DECODER.decode(body.decode("utf-8-sig"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise InvalidInput("the body is not valid JSON", code="invalid_json") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def decode_event(item: Any, *, default_time: datetime) -> UsageEvent:
    """The event of one decoded CloudEvent (by the rules of ``parse_events``; ``default_time``
    when it has no ``time``); ``InvalidInput`` naming its problems when it is not one."""
    problems: list[tuple[str, str]] = []
    event = _parse_event(item, now=default_time, problems=problems)
    if event is not None:
        problems += (("data", message) for _, message in _data_problems([(0, event.data)]))
    if event is None or problems:
        raise InvalidInput("; ".join(f"{name or 'event'}: {message}" for name, message in problems))
    return event


def parse_events(
    items: Sequence[Any], *, now: datetime
) -> tuple[list[UsageEvent], list[EventProblem]]:
    """The events of a batch, one per ``(source, id)`` (the first wins), or every problem
    found, in event order. Events without a ``time`` take ``now``."""
    if len(items) > MAX_BATCH:
        raise InvalidInput(
            f"a batch holds at most {MAX_BATCH} events, this one has {len(items)}",
            code="batch_too_large",
        )
    parsed: list[UsageEvent] = []
    datas: list[tuple[int, dict[str, Any]]] = []
    problems: list[EventProblem] = []
    for index, item in enumerate(items):
        found: list[tuple[str, str]] = []
        event = _parse_event(item, now=now, problems=found)
        problems += (_problem(index, name, message) for name, message in found)
        if event is not None:
            parsed.append(event)
        if isinstance(item, dict) and isinstance(data := item.get("data"), dict):
            datas.append((index, data))
    for index, message in _data_problems(datas):
        problems.append(_problem(index, "data", message))
    if problems:
        problems.sort(key=lambda problem: problem.index)  # stable: fields stay in order
        return [], problems
    events: dict[tuple[str, str], UsageEvent] = {}
    for event in parsed:
        events.setdefault((event.source, event.id), event)
    return list(events.values()), []


def _problem(index: int, name: str, message: str) -> EventProblem:
    return EventProblem(index, f"events[{index}]" + (f".{name}" if name else ""), message)


def _parse_event(item: Any, *, now: datetime, problems: list[tuple[str, str]]) -> UsageEvent | None:
    """The event, or ``None`` with its problems (but for what is inside ``data``, which
    ``_data_problems`` checks for the whole batch at once)."""
    if not isinstance(item, dict):
        problems.append(("", "must be a JSON object (a CloudEvent)"))
        return None
    if "specversion" not in item:
        problems.append(("specversion", f'is required ("{SPECVERSION}")'))
    elif item["specversion"] != SPECVERSION:
        problems.append(("specversion", f'must be "{SPECVERSION}"'))
    text: dict[str, str] = {}
    for name in ("id", "source", "subject"):
        value = _text(item, name, _LIMITS[name], problems)
        if value is not None:
            text[name] = value
    if "id" in text and "source" in text and len(text["source"]) + len(text["id"]) > 255:
        problems.append(("id", "source and id together must be at most 255 characters"))
    event_type = item.get("type")
    if not isinstance(event_type, str) or not _is_event_type(event_type):
        problems.append(
            (
                "type",
                "must be dot-separated parts of letters, digits, '_' and '-', at most 128 "
                "characters (like 'llm.tokens')",
            )
        )
    at = _time(item.get("time"), now=now, problems=problems)
    content_type = item.get("datacontenttype")
    if content_type is not None and content_type != JSON_CONTENT_TYPE:
        problems.append(("datacontenttype", f'must be "{JSON_CONTENT_TYPE}" or absent'))
    data = item.get("data")
    if data is None:
        data = {}
    elif not isinstance(data, dict):
        problems.append(("data", "must be a JSON object"))
    if problems or at is None or not isinstance(event_type, str) or not isinstance(data, dict):
        return None
    return UsageEvent(
        id=text["id"],
        source=text["source"],
        type=event_type,
        subject=text["subject"],
        time=at,
        data=data,
    )


def _text(
    item: dict[str, Any], name: str, limit: int, problems: list[tuple[str, str]]
) -> str | None:
    value = item.get(name)
    if not isinstance(value, str) or not value:
        problems.append((name, "is required: a non-empty string"))
    elif len(value) > limit:
        problems.append((name, f"must be at most {limit} characters"))
    elif _CONTROL.search(value) or not _is_unicode(value):
        problems.append((name, "must not contain control characters or invalid Unicode"))
    else:
        return value
    return None


def _is_event_type(value: str) -> bool:
    return len(value) <= 128 and all(_TYPE_PART.fullmatch(part) for part in value.split("."))


def _is_unicode(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which JSON's \\ud800 can smuggle in
        return False
    return True


def _time(value: Any, *, now: datetime, problems: list[tuple[str, str]]) -> datetime | None:
    if value is None:
        return now
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        problems.append(("time", _TIME_FORMAT))
        return None
    try:
        at = datetime.fromisoformat(value.upper()).astimezone(UTC)
    except (ValueError, OverflowError):
        problems.append(("time", _TIME_FORMAT))
        return None
    if not EARLIEST <= at < LATEST:
        problems.append(("time", f"must be between the years {EARLIEST.year} and {LATEST.year}"))
        return None
    return at


def _data_problems(datas: list[tuple[int, dict[str, Any]]]) -> list[tuple[int, str]]:
    """``(index, message)`` of each event whose ``data`` cannot travel through the outbox
    and JetStream.

    The batch is serialised once (the usual case: all fine); only when that fails is each
    event's data tried alone, to name the culprits. Nesting is measured only for data that
    has nested values at all."""
    datas = [(index, data) for index, data in datas if not _flat_and_plain(data)]
    if not datas:
        return []
    found = [
        (index, f"must not nest deeper than {MAX_DATA_DEPTH} levels")
        for index, data in datas
        if _has_containers(data) and _depth(data) > MAX_DATA_DEPTH
    ]
    deep = {index for index, _ in found}
    serialisable = [(index, data) for index, data in datas if index not in deep]
    if _serialisation_problem([data for _, data in serialisable]) is None:
        return found
    for index, data in serialisable:
        if (message := _serialisation_problem(data)) is not None:
            found.append((index, message))
    return found


def _flat_and_plain(data: dict[str, Any]) -> bool:
    """Whether ``data`` passes every rule at a glance, as usage data mostly does: ASCII keys,
    and values that are ASCII strings, finite numbers, booleans or null (nothing to nest,
    escape wrongly or refuse). Anything else gets the full checks."""
    for key, value in data.items():
        if type(key) is not str or not key.isascii() or "\x00" in key:
            return False
        kind = type(value)
        if kind is str:
            if not value.isascii() or "\x00" in value:
                return False
        elif kind is float:
            if not math.isfinite(value):
                return False
        elif kind is not int and kind is not bool and value is not None:
            return False
    return True


def _has_containers(data: dict[str, Any]) -> bool:
    return any(type(value) is dict or type(value) is list for value in data.values())


def _serialisation_problem(value: Any) -> str | None:
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must not contain invalid Unicode (lone surrogates)"
    except (ValueError, RecursionError):
        return "must be plain JSON"
    # PostgreSQL's JSON cannot hold NUL, so no database may: the same answer on each. The
    # text test is cheap; the walk tells a real NUL from an escaped backslash before "u0000".
    if "\\u0000" in text and _has_nul(value):
        return "must not contain NUL characters (\\u0000)"
    return None


def _has_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        current = stack.pop()
        if isinstance(current, str):
            if "\x00" in current:
                return True
        elif isinstance(current, dict):
            stack.extend(current.keys())
            stack.extend(current.values())
        elif isinstance(current, list):
            stack.extend(current)
    return False


def _depth(value: Any) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_DATA_DEPTH:
            break
        if isinstance(current, dict):
            stack.extend((child, depth + 1) for child in current.values())
        elif isinstance(current, list):
            stack.extend((child, depth + 1) for child in current)
    return deepest
