"""NATS names of the platform (subjects, streams, the durable consumer), built only from
validated tokens.

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

A ``Namespace`` with a prefix (``KGENTS_NATS_PREFIX``, for deployments sharing one cluster)
puts ``<prefix>.`` before every subject and ``<prefix>-`` before the stream and durable
consumer names: ``acme.kgent.session.…`` in ``acme-kgent-events``.
"""

import functools
from dataclasses import dataclass

from kgents.errors import InvalidInput
from kgents.ids import is_valid_id

_SESSION = "kgent.session"
_USAGE = "kgent.usage"
_CANCEL = "kgent.control.cancel"


def _token(value: str, what: str) -> str:
    if not isinstance(value, str) or not is_valid_id(value):
        shown = value[:80] if isinstance(value, str) else type(value).__name__
        raise InvalidInput(f"invalid {what}: {shown!r}", code="invalid_id")
    return value


@dataclass(frozen=True, slots=True)
class Namespace:
    """The NATS names of one deployment: ``prefix`` empty (the default) or one id-like token."""

    prefix: str = ""

    def __post_init__(self) -> None:
        if self.prefix:
            _token(self.prefix, "NATS prefix")

    def _subject(self, root: str) -> str:
        return f"{self.prefix}.{root}" if self.prefix else root

    def _name(self, name: str) -> str:
        return f"{self.prefix}-{name}" if self.prefix else name

    @property
    def session_root(self) -> str:
        return self._subject(_SESSION)

    @property
    def usage_root(self) -> str:
        return self._subject(_USAGE)

    @property
    def cancel_root(self) -> str:
        return self._subject(_CANCEL)

    @property
    def session_subjects(self) -> str:
        """Every session event (the ``kgent-events`` stream's subjects)."""
        return f"{self.session_root}.>"

    @property
    def usage_subjects(self) -> str:
        """Every usage event (the ``kgent-usage`` stream's subjects)."""
        return f"{self.usage_root}.>"

    @property
    def cancel_subjects(self) -> str:
        return f"{self.cancel_root}.*"

    @property
    def events_stream(self) -> str:
        return self._name("kgent-events")

    @property
    def usage_stream(self) -> str:
        return self._name("kgent-usage")

    @property
    def metering_consumer(self) -> str:
        return self._name("metering")


NO_PREFIX = Namespace()
SESSION_SUBJECTS = NO_PREFIX.session_subjects
USAGE_SUBJECTS = NO_PREFIX.usage_subjects
CANCEL_SUBJECTS = NO_PREFIX.cancel_subjects


def session_subject(session_id: str, event_type: str, ns: Namespace = NO_PREFIX) -> str:
    """``kgent.session.<session_id>.<event_type>``: where one session event is stored."""
    return _session_subject(ns.session_root, session_id, event_type)


@functools.lru_cache(maxsize=4096)  # every chunk of a turn asks for the same subject
def _session_subject(root: str, session_id: str, event_type: str) -> str:
    return f"{root}.{_token(session_id, 'session id')}.{_token(event_type, 'event type')}"


def session_wildcard(session_id: str, ns: Namespace = NO_PREFIX) -> str:
    """``kgent.session.<session_id>.>``: every event of one session (a consumer filter)."""
    return f"{ns.session_root}.{_token(session_id, 'session id')}.>"


def usage_subject(event_type: str, ns: Namespace = NO_PREFIX) -> str:
    """``kgent.usage.<type>``, one subject token per dot-separated part of the usage type."""
    return _usage_subject(ns.usage_root, event_type)


@functools.lru_cache(maxsize=256)  # a handful of event types
def _usage_subject(root: str, event_type: str) -> str:
    if not isinstance(event_type, str) or not event_type:
        raise InvalidInput("invalid usage event type: ''", code="invalid_id")
    parts = [_token(part, "usage event type part") for part in event_type.split(".")]
    return ".".join([root, *parts])


def cancel_subject(session_id: str, ns: Namespace = NO_PREFIX) -> str:
    """``kgent.control.cancel.<session_id>``: the core-NATS subject asking to cancel a turn."""
    return f"{ns.cancel_root}.{_token(session_id, 'session id')}"


def session_id_of(subject: str, ns: Namespace = NO_PREFIX) -> str | None:
    """The session id of a ``kgent.session.<id>.<type>`` or cancel subject; ``None`` otherwise."""
    for root in (ns.session_root, ns.cancel_root):
        if subject.startswith(root + "."):
            token = subject[len(root) + 1 :].split(".", 1)[0]
            return token if is_valid_id(token) else None
    return None


def event_type_of(subject: str, ns: Namespace = NO_PREFIX) -> str | None:
    """The event type of a ``kgent.session.<id>.<type>`` subject; ``None`` otherwise."""
    root = ns.session_root
    if not subject.startswith(root + "."):
        return None
    parts = subject[len(root) + 1 :].split(".")
    if len(parts) != 2:
        return None
    return parts[1] if is_valid_id(parts[1]) else None
