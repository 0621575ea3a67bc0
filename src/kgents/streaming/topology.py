"""The JetStream streams of DESIGN.md, created or brought up to date idempotently.

=================  ===================  =========  ==========================================
stream             subjects             retention  limits
=================  ===================  =========  ==========================================
``kgent-events``   ``kgent.session.>``  limits     10,000 msgs per subject, max age 168 h,
                                                   ``KGENTS_EVENTS_MAX_BYTES`` (1 GiB) in all
``kgent-usage``    ``kgent.usage.>``    limits     max age 30 days
=================  ===================  =========  ==========================================

The oldest session events are discarded first when a limit is reached (the database keeps every
message; only replay from the stream reaches less far back). The usage stream has no byte limit:
metering must never lose an unprocessed event.

Both use file storage, ``replicas`` from the settings and a two-minute duplicate window for
``Nats-Msg-Id`` dedupe. nats-py takes ``max_age`` and ``duplicate_window`` in *seconds* (floats)
and converts them to the nanoseconds of the JetStream API.
"""

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import nats.js.errors
from nats.js import api

from kgents.streaming.connection import NatsConnection, events_unavailable
from kgents.streaming.subjects import NO_PREFIX, Namespace

EVENTS_STREAM = NO_PREFIX.events_stream
USAGE_STREAM = NO_PREFIX.usage_stream

HOUR = 3600.0
DAY = 24 * HOUR
EVENTS_MAX_AGE_SECONDS = 168 * HOUR
EVENTS_MAX_MSGS_PER_SUBJECT = 10_000
EVENTS_MAX_BYTES = 1 << 30
USAGE_MAX_AGE_SECONDS = 30 * DAY
DUPLICATE_WINDOW_SECONDS = 120.0

StreamAction = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True, slots=True)
class StreamSpec:
    """What one stream must look like; only these fields are managed here."""

    name: str
    subjects: tuple[str, ...]
    max_age_seconds: float
    max_msgs_per_subject: int
    replicas: int
    duplicate_window_seconds: float = DUPLICATE_WINDOW_SECONDS
    description: str = ""
    max_bytes: int = -1
    """The stream's size limit in bytes (-1: none)."""

    def apply_to(self, config: api.StreamConfig) -> api.StreamConfig:
        """``config`` with every managed field set as specified (other fields kept)."""
        return dataclasses.replace(
            config,
            name=self.name,
            description=self.description or config.description,
            subjects=list(self.subjects),
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            discard=api.DiscardPolicy.OLD,
            max_age=self.max_age_seconds,
            max_msgs_per_subject=self.max_msgs_per_subject,
            max_bytes=self.max_bytes,
            num_replicas=self.replicas,
            duplicate_window=self.duplicate_window_seconds,
        )

    def matches(self, config: api.StreamConfig) -> bool:
        """True when ``config`` (as the server reports it) already has every managed field."""
        return (
            sorted(config.subjects or []) == sorted(self.subjects)
            and _enum_value(config.retention) == api.RetentionPolicy.LIMITS.value
            and _enum_value(config.storage) == api.StorageType.FILE.value
            and _enum_value(config.discard) == api.DiscardPolicy.OLD.value
            and _close(config.max_age, self.max_age_seconds)
            and config.max_msgs_per_subject == self.max_msgs_per_subject
            and (config.max_bytes if config.max_bytes is not None else -1) == self.max_bytes
            and (config.num_replicas or 1) == self.replicas
            and _close(config.duplicate_window, self.duplicate_window_seconds)
        )


@dataclass(frozen=True, slots=True)
class StreamSetup:
    """The outcome of ``ensure_streams`` for one stream."""

    name: str
    action: StreamAction


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """One stream's state, as ``kgents nats streams`` shows it."""

    name: str
    exists: bool
    subjects: tuple[str, ...] = ()
    messages: int = 0
    bytes: int = 0
    first_seq: int = 0
    last_seq: int = 0
    consumer_count: int = 0
    replicas: int = 0
    max_age_seconds: float = 0.0


def stream_specs(
    *, replicas: int, ns: Namespace = NO_PREFIX, events_max_bytes: int = EVENTS_MAX_BYTES
) -> tuple[StreamSpec, StreamSpec]:
    """The two streams of the platform for ``replicas`` (1 embedded, 3 in production)."""
    events = StreamSpec(
        name=ns.events_stream,
        subjects=(ns.session_subjects,),
        max_age_seconds=EVENTS_MAX_AGE_SECONDS,
        max_msgs_per_subject=EVENTS_MAX_MSGS_PER_SUBJECT,
        replicas=replicas,
        description="kgents session events (chunks, turns) for followers and resume",
        max_bytes=events_max_bytes,
    )
    usage = StreamSpec(
        name=ns.usage_stream,
        subjects=(ns.usage_subjects,),
        max_age_seconds=USAGE_MAX_AGE_SECONDS,
        max_msgs_per_subject=-1,
        replicas=replicas,
        description="kgents usage events (CloudEvents) for metering",
    )
    return events, usage


async def ensure_streams(
    conn: NatsConnection,
    *,
    replicas: int,
    specs: Sequence[StreamSpec] | None = None,
    ns: Namespace = NO_PREFIX,
    events_max_bytes: int = EVENTS_MAX_BYTES,
) -> list[StreamSetup]:
    """Create each stream, or update it when a managed field differs; safe to run any time.

    Raises ``EventsUnavailable`` when NATS cannot be reached or refuses a change (for example
    more replicas than servers).
    """
    outcomes = []
    if specs is None:
        specs = stream_specs(replicas=replicas, ns=ns, events_max_bytes=events_max_bytes)
    for spec in specs:
        outcomes.append(StreamSetup(name=spec.name, action=await _ensure_stream(conn, spec)))
    return outcomes


async def _ensure_stream(conn: NatsConnection, spec: StreamSpec) -> StreamAction:
    conn.require_connected()
    js = conn.js
    with events_unavailable(f"setting up stream {spec.name}"):
        try:
            info = await js.stream_info(spec.name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(spec.apply_to(api.StreamConfig()))
            return "created"
        if spec.matches(info.config):
            return "unchanged"
        await js.update_stream(spec.apply_to(info.config))
        return "updated"


async def describe_streams(
    conn: NatsConnection, names: Sequence[str] = (EVENTS_STREAM, USAGE_STREAM)
) -> list[StreamStatus]:
    """The state of each stream: messages, bytes, first/last sequence, consumers."""
    conn.require_connected()
    statuses = []
    for name in names:
        with events_unavailable(f"reading stream {name}"):
            try:
                info = await conn.js.stream_info(name)
            except nats.js.errors.NotFoundError:
                statuses.append(StreamStatus(name=name, exists=False))
                continue
        statuses.append(
            StreamStatus(
                name=name,
                exists=True,
                subjects=tuple(info.config.subjects or ()),
                messages=info.state.messages,
                bytes=info.state.bytes,
                first_seq=info.state.first_seq,
                last_seq=info.state.last_seq,
                consumer_count=info.state.consumer_count,
                replicas=info.config.num_replicas or 1,
                max_age_seconds=info.config.max_age or 0.0,
            )
        )
    return statuses


def _enum_value(value: object) -> object:
    return getattr(value, "value", value)


def _close(actual: float | None, expected: float) -> bool:
    return math.isclose(actual or 0.0, expected, rel_tol=1e-9, abs_tol=1e-6)
