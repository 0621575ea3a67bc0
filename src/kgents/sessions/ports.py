"""What the sessions service needs from storage and from the event stream."""

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from kgents.records import HistoryMessage, Message, Session, Turn, UsageEvent

SessionEventType = Literal["user_message", "chunk", "complete", "error"]


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """One event of a session's stream. ``msg_id`` makes republishing it harmless (dedupe)."""

    session_id: str
    type: SessionEventType
    data: dict[str, Any] = field(default_factory=dict)
    msg_id: str | None = None


@dataclass(frozen=True, slots=True)
class TurnStartQuery:
    """What starting a turn reads: count a request of ``count_key`` in the rate-limit window
    ``window_start`` (when given), read and lock the tenant's session (``session_id`` ``None``:
    none), the tenant's tokens in the month ``tokens_since`` begins (when given) and the
    session's last ``history_limit`` messages."""

    tenant_id: str
    session_id: str | None
    count_key: str | None
    window_start: datetime | None
    tokens_since: datetime | None
    history_limit: int


@dataclass(frozen=True, slots=True)
class TurnStartReads:
    """What starting a turn reads, all at once, in the transaction that then stores it."""

    request_count: int | None  # the key's requests in the window, this one included
    session: Session | None  # the tenant's live session (locked until the end)
    tokens_used: int | None  # the tenant's tokens in the month from ``tokens_since``
    history: list[Message]  # the session's last messages, oldest first


@dataclass(frozen=True, slots=True)
class NewTurn:
    """What a turn start writes: the running turn, its user message and usage events."""

    turn: Turn
    user_message: Message
    events: Sequence[UsageEvent]
    lease_until: datetime


TurnPlan = Callable[[TurnStartReads], NewTurn | None]
"""Decides a turn from what its start read: the ``NewTurn`` to write, or ``None`` to refuse.

Called once, synchronously, in the middle of the store's transaction, wherever the store runs
its statements (possibly a database connection's own thread): it must be quick, must not
touch the event loop, and may only keep what it decided for its caller to read after the
store returns."""


class SessionStore(Protocol):
    async def add_session(self, session: Session, *, events: Sequence[UsageEvent]) -> None: ...

    async def list_sessions(
        self, tenant_id: str, *, limit: int, offset: int
    ) -> tuple[list[Session], int]: ...

    async def get_session(self, tenant_id: str, session_id: str) -> Session | None: ...

    async def delete_session(self, tenant_id: str, session_id: str, *, at: datetime) -> bool: ...

    async def start_turn(self, query: TurnStartQuery, plan: TurnPlan) -> NewTurn | None:
        """Start a turn in one write transaction: read what ``query`` asks, call ``plan``
        with it and write the ``NewTurn`` it returns, then commit; return that ``NewTurn``.

        When ``plan`` returns ``None`` the request's count is committed and nothing else.
        Whether the session runs a turn already is not read: the store finds out when it
        writes the turn and then raises ``TurnInProgress``, again with only the request's
        count committed (nothing at all when a concurrent start won a unique index)."""
        ...

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
    ) -> tuple[list[HistoryMessage], int]: ...


class FollowedEvent(Protocol):
    """A session event read back from the stream, with its stream sequence."""

    @property
    def seq(self) -> int: ...

    @property
    def event(self) -> SessionEvent: ...


class Follower(Protocol):
    """An open follower: iterate it for events in stream order; ``aclose`` it when done."""

    def __aiter__(self) -> AsyncIterator[FollowedEvent]: ...

    async def next_batch(self, wait_seconds: float | None = None) -> Sequence[FollowedEvent]:
        """Every event received and not yet taken, in order, waiting up to ``wait_seconds``
        for the first; empty when none came or ``wake()`` was called. ``StopAsyncIteration``
        once closed; ``EventsUnavailable`` once the stream failed (after the events before)."""
        ...

    def wake(self) -> None:
        """Make a waiting ``next_batch`` return now."""
        ...

    async def aclose(self) -> None: ...


async def each_event(follower: Follower) -> AsyncIterator[FollowedEvent]:
    """``follower``'s events one at a time (its ``__aiter__``), read in batches until closed."""
    while True:
        try:
            batch = await follower.next_batch()
        except StopAsyncIteration:
            return
        for followed in batch:
            yield followed


class SessionEventLog(Protocol):
    """The durable, ordered event stream of sessions (JetStream in production and in tests)."""

    def is_connected(self) -> bool:
        """False while the event stream is unreachable: new turns are then refused."""
        ...

    async def wait_connected(self, wait_seconds: float) -> bool:
        """True at once when connected, else once a reconnect happens within ``wait_seconds``
        (a client moving to another server); False when it stays unreachable."""
        ...

    async def publish(self, event: SessionEvent) -> int:
        """Publish and wait for the ack; return the event's stream sequence. Through a leader
        election or a reconnect the same message is sent again (for a bounded time) before
        ``EventsUnavailable`` is raised."""
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
