"""NATS subjects of the platform, built only from validated tokens.

Every token that comes from outside (session ids, event types) must match
``kgents.ids.ID_PATTERN`` (``[A-Za-z0-9_-]{1,64}``), so nobody can inject ``.``, ``*``, ``>`` or
whitespace into a subject and reach another session's events. Anything else raises
``InvalidInput``.

Subjects::

    kgent.session.<session_id>.<event_type>    stored in the ``kgent-events`` stream
    kgent.usage.<type token>[.<type token>…]   stored in the ``kgent-usage`` stream
    kgent.control.cancel.<session_id>          core NATS only (not stored): cancel a turn

Usage event types contain dots (``llm.tokens``, ``api.request``); each dot-separated part
becomes one subject token, so ``llm.tokens`` is published on ``kgent.usage.llm.tokens`` and a
consumer can filter on ``kgent.usage.llm.>``. Each part is validated like an id.
"""

import functools

from kgents.errors import InvalidInput
from kgents.ids import is_valid_id

SESSION_PREFIX = "kgent.session"
USAGE_PREFIX = "kgent.usage"
CANCEL_PREFIX = "kgent.control.cancel"

SESSION_SUBJECTS = f"{SESSION_PREFIX}.>"
USAGE_SUBJECTS = f"{USAGE_PREFIX}.>"
CANCEL_SUBJECTS = f"{CANCEL_PREFIX}.*"


def _token(value: str, what: str) -> str:
    if not isinstance(value, str) or not is_valid_id(value):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidInput(f"invalid {what}: {shown!r}", code="invalid_id")
    return value


def session_subject(session_id: str, event_type: str) -> str:
    """``kgent.session.<session_id>.<event_type>``: where one session event is stored."""
    return _session_subject(session_id, event_type)


@functools.lru_cache(maxsize=4096)  # every chunk of a turn asks for the same subject
def _session_subject(session_id: str, event_type: str) -> str:
    return f"{SESSION_PREFIX}.{_token(session_id, 'session id')}.{_token(event_type, 'event type')}"


def session_wildcard(session_id: str) -> str:
    """``kgent.session.<session_id>.>``: every event of one session (a consumer filter)."""
    return f"{SESSION_PREFIX}.{_token(session_id, 'session id')}.>"


def usage_subject(event_type: str) -> str:
    """``kgent.usage.<type>``, one subject token per dot-separated part of the usage type."""
    if not isinstance(event_type, str) or not event_type:
        raise InvalidInput("invalid usage event type: ''", code="invalid_id")
    parts = [_token(part, "usage event type part") for part in event_type.split(".")]
    return ".".join([USAGE_PREFIX, *parts])


def cancel_subject(session_id: str) -> str:
    """``kgent.control.cancel.<session_id>``: the core-NATS subject asking to cancel a turn."""
    return f"{CANCEL_PREFIX}.{_token(session_id, 'session id')}"


def session_id_of(subject: str) -> str | None:
    """The session id of a ``kgent.session.<id>.<type>`` or cancel subject; ``None`` otherwise."""
    for prefix in (SESSION_PREFIX, CANCEL_PREFIX):
        if subject.startswith(prefix + "."):
            token = subject[len(prefix) + 1 :].split(".", 1)[0]
            return token if is_valid_id(token) else None
    return None


def event_type_of(subject: str) -> str | None:
    """The event type of a ``kgent.session.<id>.<type>`` subject; ``None`` otherwise."""
    if not subject.startswith(SESSION_PREFIX + "."):
        return None
    parts = subject.split(".")
    if len(parts) != 4:
        return None
    return parts[3] if is_valid_id(parts[3]) else None
