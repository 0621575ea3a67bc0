"""How events look on the wire: JSON bodies, ``Nats-Msg-Id`` headers, RFC 3339 UTC times.

A session event on ``kgent.session.<session_id>.<type>``::

    headers: Nats-Msg-Id: <event.msg_id>            (only when the event has one)
    body:    {"type": "chunk", "session_id": "ses_…", "time": "2026-01-02T03:04:05.123456Z",
              "data": {...}}

A usage event on ``kgent.usage.<type tokens>`` is a CloudEvents 1.0 JSON object
(``kgents.metering.cloudevents``, the one codec of usage events)::

    headers: Nats-Msg-Id: <source>:<id>
    body:    {"specversion": "1.0", "id": "…", "source": "kgents-api", "type": "llm.tokens",
              "subject": "<tenant id>", "time": "…Z", "datacontenttype": "application/json",
              "data": {...}}
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, get_args

import orjson

from kgents.clock import as_utc, utc_now_rfc3339
from kgents.errors import InvalidInput
from kgents.metering import cloudevents
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
_SESSION_HEAD = '{"type":"%s","session_id":"%s","time":"%s","data":'


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
    # The hot path of every chunk: only ``data`` needs a JSON encoder (orjson: compact, text
    # as UTF-8, the same bytes as the standard library's with those options, in a tenth of
    # the time); the other fields are validated tokens ([A-Za-z0-9_-]) and a timestamp, which
    # need no escaping.
    head = _SESSION_HEAD % (
        event.type,
        event.session_id,
        utc_now_rfc3339() if at is None else cloudevents.format_time(at),
    )
    payload = head.encode() + orjson.dumps(event.data) + b"}"
    return WireMessage(subject, payload, _msg_id_headers(event.msg_id))


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
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
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


def encode_usage_event(
    event: UsageEvent | StoredUsageEvent, ns: Namespace = NO_PREFIX
) -> WireMessage:
    """The subject, CloudEvents body (``metering.cloudevents.encode``) and dedupe header of a
    usage event, from a ``UsageEvent`` or an outbox row as stored. Invalid types and ids raise
    ``InvalidInput``."""
    return WireMessage(
        subject=usage_subject(event.type, ns),
        payload=cloudevents.encode(event),
        headers=_msg_id_headers(usage_msg_id(event)),
    )
