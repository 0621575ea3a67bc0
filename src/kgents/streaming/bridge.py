"""``JetStreamEventLog``: the sessions' event stream on JetStream (implements ``SessionEventLog``).

- ``publish`` waits for the ack and returns the stream sequence (one round trip); through a
  leader election or a reconnect it sends the same message again for up to
  ``failover_seconds`` (``failover.publish_with_failover``).
- ``batch()`` (for bulk writers such as benchmarks) publishes asynchronously and awaits acks in
  batches: at most ``window`` acks are outstanding; half the window is awaited when it fills,
  and ``flush()`` awaits the rest.
- ``follow`` / ``open_follower``: replay from a sequence (or from the start, or only new events),
  then live, in order, bounded buffering. All the followers of a session in this process share
  one ordered ephemeral consumer filtered on ``kgent.session.<id>.>`` (``fanout.SessionHub``);
  a follower behind it replays on its own consumer first.
- ``turn_chunks`` reads back what a dead turn generated, for start-up recovery.
- ``request_cancel`` / ``subscribe_cancels`` signal cancellation across replicas (core NATS).

Nothing waits without a bound: each ack wait has ``ack_timeout``, each publish
``failover_seconds`` in all.
"""

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable

import nats.js.errors

from kgents.errors import EventsUnavailable
from kgents.sessions.ports import SessionEvent
from kgents.streaming.cancel import CancelSubscription, publish_cancel, subscribe_cancels
from kgents.streaming.connection import NatsConnection
from kgents.streaming.consumer import (
    DEFAULT_HEARTBEAT_SECONDS,
    DEFAULT_OUTAGE_SECONDS,
    OrderedConsumer,
    StartPosition,
)
from kgents.streaming.failover import RECONNECT_GRACE_SECONDS, publish_with_failover
from kgents.streaming.fanout import SessionFollower, SessionHub
from kgents.streaming.pipeline import AckRouter, PipelinedBatch
from kgents.streaming.subjects import NO_PREFIX, Namespace, session_subject, session_wildcard
from kgents.streaming.wire import decode_session_event, encode_session_event

logger = logging.getLogger(__name__)

DEFAULT_ACK_TIMEOUT = 5.0
DEFAULT_ACK_WINDOW = 256
DEFAULT_FOLLOW_BATCH = 128
FOLLOW_MAILBOX_BATCHES = 4
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_FAILOVER_SECONDS = 30.0


class JetStreamBatch:
    """Publishes the events of one turn without a round trip each (``EventBatch``).

    At most ``window`` acks are outstanding: when the window is full, ``add`` waits until half
    of them are back; ``flush`` waits for all. Any failure (no ack within ``ack_timeout``, the
    connection dropped, the stream refused an event) raises ``EventsUnavailable`` and sticks.
    """

    def __init__(
        self,
        router: AckRouter,
        conn: NatsConnection,
        *,
        window: int,
        ack_timeout: float,
        ns: Namespace = NO_PREFIX,
    ) -> None:
        if window < 2:
            raise ValueError("window must be at least 2")
        self._router = router
        self._conn = conn
        self._window = window
        self._ack_timeout = ack_timeout
        self._ns = ns
        self._batch: PipelinedBatch | None = None

    @property
    def published(self) -> int:
        """Events acknowledged so far."""
        return self._batch.acknowledged if self._batch is not None else 0

    @property
    def first_seq(self) -> int | None:
        """Stream sequence of the batch's first event, once acknowledged."""
        return self._batch.seqs.get(0) if self._batch is not None else None

    @property
    def last_seq(self) -> int | None:
        """Stream sequence of the batch's last acknowledged event."""
        if self._batch is None or not self._batch.seqs:
            return None
        return max(self._batch.seqs.values())

    async def add(self, event: SessionEvent) -> None:
        """Publish ``event``; waits for the older half of the window when it is full."""
        message = encode_session_event(event, ns=self._ns)
        batch = self._batch
        if batch is None:
            self._conn.require_connected()
            batch = self._batch = await self._router.open_batch(
                window=self._window, ack_timeout=self._ack_timeout, what="session events"
            )
        await batch.publish(message.subject, message.payload, message.headers)

    async def flush(self) -> None:
        """Wait until every event added so far is acknowledged."""
        if self._batch is not None:
            await self._batch.flush()


class JetStreamEventLog:
    """The ``SessionEventLog`` on the ``kgent-events`` stream."""

    def __init__(
        self,
        conn: NatsConnection,
        *,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        ack_window: int = DEFAULT_ACK_WINDOW,
        follow_batch: int = DEFAULT_FOLLOW_BATCH,
        heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
        outage_seconds: float = DEFAULT_OUTAGE_SECONDS,
        ns: Namespace = NO_PREFIX,
        failover_seconds: float = DEFAULT_FAILOVER_SECONDS,
    ) -> None:
        self._conn = conn
        self._failover = failover_seconds
        self._router = AckRouter(conn)
        self._ack_timeout = ack_timeout
        self._ack_window = ack_window
        self._follow_batch = follow_batch
        self._heartbeat = heartbeat_seconds
        self._outage = outage_seconds
        self._ns = ns
        self._stream = ns.events_stream
        # A client may fall a few pull batches behind before it leaves the shared feed for a
        # consumer of its own; a joiner up to one batch behind starts from the feed's memory.
        self._hub = SessionHub(
            self._session_consumer,
            self.last_sequence,
            mailbox=FOLLOW_MAILBOX_BATCHES * max(follow_batch, 1),
            ring=max(follow_batch, 1),
            ns=ns,
        )

    @property
    def connection(self) -> NatsConnection:
        return self._conn

    def is_connected(self) -> bool:
        """True while NATS is reachable (for ``/health``)."""
        return self._conn.is_connected

    async def wait_connected(self, wait_seconds: float) -> bool:
        """True at once when connected, else once a reconnect happens within ``wait_seconds``."""
        if not self._conn.is_connected:
            await self._conn.wait_reconnected(wait_seconds)
        return self._conn.is_connected

    async def publish(self, event: SessionEvent) -> int:
        """Publish and wait for the ack; return the event's stream sequence.

        Through a leader election or a reconnect the same message is sent again until it is
        acknowledged or ``failover_seconds`` have passed (then ``EventsUnavailable``).
        Republishing an event with the same ``msg_id`` within the duplicate window stores
        nothing and returns the sequence of the first copy.
        """
        return await publish_with_failover(
            self._router,
            encode_session_event(event, ns=self._ns),
            ack_timeout=self._ack_timeout,
            failover_seconds=self._failover,
        )

    def batch(self) -> JetStreamBatch:
        """A batch publisher for the events of one turn."""
        return JetStreamBatch(
            self._router,
            self._conn,
            window=self._ack_window,
            ack_timeout=self._ack_timeout,
            ns=self._ns,
        )

    async def open_follower(
        self, session_id: str, *, after_seq: int | None, from_start: bool = False
    ) -> SessionFollower:
        """Start following a session now (``EventsUnavailable`` raised here, not later, once
        a reconnect did not come within ``RECONNECT_GRACE_SECONDS``)."""
        if not await self.wait_connected(RECONNECT_GRACE_SECONDS):
            raise EventsUnavailable("event stream unavailable: NATS is disconnected")
        return await self._hub.open(session_id, after_seq=after_seq, from_start=from_start)

    @property
    def hub(self) -> SessionHub:
        """The shared followers of this process (one consumer per followed session)."""
        return self._hub

    def _session_consumer(self, session_id: str, start: StartPosition) -> OrderedConsumer:
        return OrderedConsumer(
            self._conn,
            stream=self._stream,
            filter_subject=session_wildcard(session_id, self._ns),
            start=start,
            batch=self._follow_batch,
            heartbeat_seconds=self._heartbeat,
            outage_seconds=self._outage,
        )

    async def follow(
        self, session_id: str, *, after_seq: int | None, from_start: bool = False
    ) -> AsyncGenerator[tuple[int, SessionEvent], None]:
        """Every event of the session after ``after_seq`` (or all retained ones with
        ``from_start``, or only new ones when neither is given), then live ones, in order.

        Yields ``(stream sequence, event)``. Closing the iterator deletes the consumer.
        """
        follower = await self.open_follower(session_id, after_seq=after_seq, from_start=from_start)
        try:
            async for received in follower:
                yield received.seq, received.event
        finally:
            await follower.aclose()

    async def last_sequence(self, session_id: str) -> int | None:
        """The stream sequence of the session's latest retained event (``None``: no event)."""
        subject = session_wildcard(session_id, self._ns)
        try:
            message = await self._conn.guard(
                self._conn.js.get_last_msg(self._stream, subject), action="reading the last event"
            )
        except EventsUnavailable as exc:
            if isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                return None
            raise
        return int(message.seq) if message.seq is not None else None

    async def turn_chunks(self, session_id: str, turn_id: str, *, first_seq: int) -> list[str]:
        """The texts of the ``chunk`` events of a turn, in order (to recover a dead turn)."""
        events = await self.read_turn_chunks(session_id, turn_id, first_seq=first_seq)
        return [str(event.data.get("text", "")) for event in events]

    async def read_turn_chunks(
        self,
        session_id: str,
        turn_id: str,
        *,
        first_seq: int,
        wait_seconds: float = DEFAULT_READ_TIMEOUT,
    ) -> list[SessionEvent]:
        """The ``chunk`` events of ``turn_id`` stored from ``first_seq`` on, in index order.

        Reads up to the end of the stream as it is now; a repeated chunk index counts once.
        Raises ``EventsUnavailable`` if that takes longer than ``wait_seconds``.
        """
        consumer = OrderedConsumer(
            self._conn,
            stream=self._stream,
            filter_subject=session_subject(session_id, "chunk", self._ns),
            start=StartPosition(after_seq=max(first_seq, 1) - 1),
            batch=DEFAULT_ACK_WINDOW,
            heartbeat_seconds=self._heartbeat,
            outage_seconds=wait_seconds,
        )
        try:
            async with asyncio.timeout(wait_seconds):
                async with consumer:
                    return await _collect_chunks(consumer, turn_id, self._ns)
        except TimeoutError as exc:
            raise EventsUnavailable(
                f"event stream unavailable: reading turn {turn_id} took over {wait_seconds}s"
            ) from exc

    async def request_cancel(self, session_id: str) -> None:
        """Ask whichever replica runs the session's turn to cancel it."""
        await publish_cancel(self._conn, session_id, wait_seconds=self._ack_timeout, ns=self._ns)

    async def subscribe_cancels(
        self, callback: Callable[[str], Awaitable[None]]
    ) -> CancelSubscription:
        """Call ``callback(session_id)`` for every cancel request of any replica."""
        return await subscribe_cancels(self._conn, callback, ns=self._ns)


async def _collect_chunks(
    consumer: OrderedConsumer, turn_id: str, ns: Namespace
) -> list[SessionEvent]:
    by_index: dict[int, SessionEvent] = {}
    unindexed: list[SessionEvent] = []
    remaining = consumer.initial_pending
    while remaining > 0:
        message = await consumer.next()
        remaining = message.pending
        received = decode_session_event(
            seq=message.seq,
            subject=message.subject,
            payload=message.data,
            headers=message.headers,
            ns=ns,
        )
        if received is None or received.event.data.get("turn_id") != turn_id:
            continue
        index = received.event.data.get("index")
        if isinstance(index, int):
            by_index.setdefault(index, received.event)
        else:
            unindexed.append(received.event)
    return [by_index[i] for i in sorted(by_index)] + unindexed
