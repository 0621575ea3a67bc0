"""How events look on the wire: JSON bodies, ``Nats-Msg-Id`` headers, RFC 3339 UTC times.

A session event on ``kgent.session.<session_id>.<type>``::

    headers: Nats-Msg-Id: <event.msg_id>            (only when the event has one)
    body:    {"type": "chunk", "session_id": "ses_…", "time": "2026-01-02T03:04:05.123456Z",
              "data": {...}}

A usage event on ``kgent.usage.<type tokens>`` is a CloudEvents 1.0 JSON object::

    headers: Nats-Msg-Id: <source>:<id>
    body:    {"specversion": "1.0", "id": "…", "source": "kgents-api", "type": "llm.tokens",
              "subject": "<tenant id>", "time": "…Z", "datacontenttype": "application/json",
              "data": {...}}
"""

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from json.encoder import encode_basestring
from typing import Any, NamedTuple, get_args

from kgents.clock import as_utc, utc_now
from kgents.errors import InvalidInput
from kgents.metering.relay import StoredUsageEvent
from kgents.records import UsageEvent
from kgents.sessions.ports import SessionEvent, SessionEventType
from kgents.streaming.subjects import (
    NO_PREFIX,
    Namespace,
    event_type_of,
    session_id_of,
    session_subject,
    usage_subject,
)

logger = logging.getLogger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
SESSION_EVENT_TYPES: frozenset[str] = frozenset(get_args(SessionEventType))
_MAX_MSG_ID_LENGTH = 256
# One encoder for every message: json.dumps with options builds a new encoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_SESSION_BODY = '{"type":"%s","session_id":"%s","time":"%s","data":%s}'


class WireMessage(NamedTuple):
    """A message ready to publish."""

    subject: str
    payload: bytes
    headers: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """A session event read back from the stream, with its stream sequence and publish time."""

    seq: int
    event: SessionEvent
    time: datetime | None
    memo: dict[str, bytes] = field(default_factory=dict, compare=False, repr=False)
    """Encodings of this event made by a reader (an SSE frame), kept for the other followers
    in the process that are handed the same object."""


def rfc3339(value: datetime) -> str:
    """``value`` as RFC 3339 in UTC with a ``Z`` suffix (naive values are taken to be UTC)."""
    return as_utc(value).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _now_text() -> str:
    return utc_now().isoformat(timespec="microseconds")[:-6] + "Z"  # utc_now ends in +00:00


def parse_rfc3339(value: object) -> datetime | None:
    """An aware UTC datetime from an RFC 3339 string, or ``None`` when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return as_utc(parsed)


def _msg_id_headers(msg_id: str | None) -> dict[str, str] | None:
    if msg_id is None:
        return None
    # A header value is one line of the NATS protocol: no CR/LF, bounded length.
    if (
        not msg_id
        or len(msg_id) > _MAX_MSG_ID_LENGTH
        or "\r" in msg_id
        or "\n" in msg_id
        or "\0" in msg_id
    ):
        raise InvalidInput("invalid message id", code="invalid_msg_id")
    return {MSG_ID_HEADER: msg_id}


def encode_session_event(
    event: SessionEvent, *, at: datetime | None = None, ns: Namespace = NO_PREFIX
) -> WireMessage:
    """The subject, JSON body and dedupe header of ``event`` (ids validated on the way)."""
    if event.type not in SESSION_EVENT_TYPES:
        raise InvalidInput(f"unknown session event type {event.type!r}", code="invalid_event")
    subject = session_subject(event.session_id, event.type, ns)  # validates both tokens
    # The hot path of every chunk: only ``data`` needs a JSON encoder; the other fields are
    # validated tokens ([A-Za-z0-9_-]) and a timestamp, which need no escaping.
    payload = _SESSION_BODY % (
        event.type,
        event.session_id,
        rfc3339(at) if at is not None else _now_text(),
        _ENCODER.encode(event.data),
    )
    return WireMessage(subject, payload.encode(), _msg_id_headers(event.msg_id))


def decode_session_event(
    *,
    seq: int,
    subject: str,
    payload: bytes,
    headers: Mapping[str, str] | None,
    ns: Namespace = NO_PREFIX,
) -> ReceivedEvent | None:
    """The event stored at ``seq``, or ``None`` (logged) if the message is not one of ours."""
    session_id = session_id_of(subject, ns)
    subject_type = event_type_of(subject, ns)
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if (
        session_id is None
        or not isinstance(body, dict)
        or body.get("type") != subject_type
        or subject_type not in SESSION_EVENT_TYPES
        or not isinstance(body.get("data", {}), dict)
    ):
        logger.warning("skipping malformed session event at seq %d on %s", seq, subject)
        return None
    event = SessionEvent(
        session_id=session_id,
        type=subject_type,  # type: ignore[arg-type]  # checked against SESSION_EVENT_TYPES
        data=body.get("data") or {},
        msg_id=(headers or {}).get(MSG_ID_HEADER),
    )
    return ReceivedEvent(seq=seq, event=event, time=parse_rfc3339(body.get("time")))


def usage_msg_id(event: UsageEvent | StoredUsageEvent) -> str:
    """The dedupe id of a usage event: unique per ``(source, id)``, like the meter store's key."""
    return f"{event.source}:{event.id}"


def cloudevent(event: UsageEvent) -> dict[str, Any]:
    """``event`` as a CloudEvents 1.0 JSON object (structured mode)."""
    return {
        "specversion": event.specversion,
        "id": event.id,
        "source": event.source,
        "type": event.type,
        "subject": event.subject,
        "time": rfc3339(event.time),
        "datacontenttype": "application/json",
        "data": event.data,
    }


def encode_usage_event(event: UsageEvent, ns: Namespace = NO_PREFIX) -> WireMessage:
    """The subject, CloudEvents body and dedupe header of a usage event."""
    return WireMessage(
        subject=usage_subject(event.type, ns),
        payload=_ENCODER.encode(cloudevent(event)).encode(),
        headers=_msg_id_headers(usage_msg_id(event)),
    )


def encode_stored_usage_event(event: StoredUsageEvent, ns: Namespace = NO_PREFIX) -> WireMessage:
    """What ``encode_usage_event`` makes of the same event, from the outbox's stored form:
    ``data`` goes on the wire as the JSON text it was stored as (valid JSON already: the outbox
    wrote it with ``json.dumps``), strings are escaped by the JSON encoder's own function and
    ``time`` is RFC 3339 text already. Invalid types and ids raise ``InvalidInput``."""
    payload = _STORED_USAGE_BODY % (
        encode_basestring(event.id),
        encode_basestring(event.source),
        encode_basestring(event.type),
        encode_basestring(event.subject),
        event.time,
        event.data_json,
    )
    return WireMessage(
        subject=usage_subject(event.type, ns),
        payload=payload.encode(),
        headers=_msg_id_headers(usage_msg_id(event)),
    )


# ``cloudevent``'s object, field for field, with ``data`` put in as stored.
_STORED_USAGE_BODY = (
    '{"specversion":"1.0","id":%s,"source":%s,"type":%s,"subject":%s,"time":"%s",'
    '"datacontenttype":"application/json","data":%s}'
)
