"""What the sessions service needs from storage and from the event stream."""

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from kgents.records import Message, Session, Turn, UsageEvent

SessionEventType = Literal["user_message", "chunk", "complete", "error"]


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """One event of a session's stream. ``msg_id`` makes republishing it harmless (dedupe)."""

    session_id: str
    type: SessionEventType
    data: dict[str, Any] = field(default_factory=dict)
    msg_id: str | None = None


class SessionStore(Protocol):
    async def add_session(self, session: Session, *, events: Sequence[UsageEvent]) -> None: ...

    async def list_sessions(
        self, tenant_id: str, *, limit: int, offset: int
    ) -> tuple[list[Session], int]: ...

    async def get_session(self, tenant_id: str, session_id: str) -> Session | None: ...

    async def delete_session(self, tenant_id: str, session_id: str, *, at: datetime) -> bool: ...

    async def start_turn(
        self,
        turn: Turn,
        *,
        user_message: Message,
        events: Sequence[UsageEvent],
        lease_until: datetime,
    ) -> Session: ...

    async def finish_turn(
        self, turn: Turn, *, assistant_message: Message | None, events: Sequence[UsageEvent]
    ) -> Turn | None: ...

    async def set_first_seq(self, turn_id: str, seq: int) -> None: ...

    async def renew_leases(self, turn_ids: Sequence[str], *, until: datetime) -> None: ...

    async def expired_turns(self, *, now: datetime) -> Sequence[Turn]: ...

    async def get_turn(self, tenant_id: str, turn_id: str) -> Turn | None: ...

    async def running_turns(self, *, session_id: str | None = None) -> Sequence[Turn]: ...

    async def recent_messages(self, session_id: str, *, limit: int) -> list[Message]: ...

    async def list_messages(
        self, session_id: str, *, limit: int, offset: int
    ) -> tuple[list[Message], int]: ...


class FollowedEvent(Protocol):
    """A session event read back from the stream, with its stream sequence."""

    @property
    def seq(self) -> int: ...

    @property
    def event(self) -> SessionEvent: ...


class Follower(Protocol):
    """An open follower: iterate it for events in stream order; ``aclose`` it when done."""

    def __aiter__(self) -> AsyncIterator[FollowedEvent]: ...

    async def aclose(self) -> None: ...


class EventBatch(Protocol):
    """Publishes one turn's events without a round trip each; acks are awaited in batches."""

    async def add(self, event: SessionEvent) -> None:
        """Publish ``event``; may wait for earlier acks when too many are outstanding."""
        ...

    async def flush(self) -> None:
        """Wait until every event added so far is acknowledged."""
        ...


class SessionEventLog(Protocol):
    """The durable, ordered event stream of sessions (JetStream in production and in tests)."""

    def is_connected(self) -> bool:
        """False while the event stream is unreachable: new turns are then refused."""
        ...

    async def publish(self, event: SessionEvent) -> int:
        """Publish and wait for the ack; return the event's stream sequence."""
        ...

    def batch(self) -> EventBatch:
        """A batch publisher for the events of one turn."""
        ...

    async def open_follower(
        self, session_id: str, *, after_seq: int | None, from_start: bool = False
    ) -> "Follower":
        """Start following a session: every event after ``after_seq`` (or all retained ones
        with ``from_start``, or only new ones when neither is given), then live ones, in order.

        Raises ``EventsUnavailable`` here, before anything is sent to a client."""
        ...

    async def request_cancel(self, session_id: str) -> None:
        """Ask whichever replica runs the session's turn to cancel it."""
        ...

    async def turn_chunks(self, session_id: str, turn_id: str, *, first_seq: int) -> list[str]:
        """The texts of the ``chunk`` events of a turn, in order (to recover a dead turn)."""
        ...
