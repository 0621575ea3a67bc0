"""Ordered ephemeral consumers: read one filtered slice of a stream in order, with bounded memory.

This is JetStream's "ordered consumer" done with pull requests (as the newer NATS clients do):
an ephemeral, memory-backed, ack-less consumer that the server forgets soon after we stop
pulling. The client asks for ``batch`` messages at a time and asks again only once the caller
has taken them, so at most one batch is ever buffered however slow the caller is. (nats-py's
push-based ordered consumer lets the server's flow-control window, megabytes per follower,
pile up in the client, and loses messages when a bounded buffer overflows.)

Ordering and gap-freedom come from the consumer sequence: any gap, a missed heartbeat, a
reconnect or a vanished consumer makes us recreate the consumer from the last stream sequence
we handed out plus one. The caller sees each stream sequence at most once, in increasing order.

Deliveries reach ``next()`` through a callback subscription that puts them in a bounded
``asyncio.Queue``; ``next()`` takes a buffered one with ``get_nowait()`` and only waits (under
``asyncio.timeout``) when the queue is empty. nats-py's ``Subscription.next_msg`` costs a
``uuid4()``, a task and a ``wait_for`` per message, several times the rest of the path
(``bench/RESULTS.md``).
"""

import asyncio
import contextlib
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from kgents.errors import EventsUnavailable
from kgents.streaming.connection import (
    CLEANUP_ERRORS,
    NATS_ERRORS,
    NatsConnection,
    events_unavailable,
)
from kgents.streaming.delivery import delivery_metadata
from kgents.streaming.failover import RECONNECT_GRACE_SECONDS, retriable

logger = logging.getLogger(__name__)

DEFAULT_BATCH = 256
DEFAULT_HEARTBEAT_SECONDS = 5.0
DEFAULT_EXPIRES_SECONDS = 30.0
DEFAULT_OUTAGE_SECONDS = 30.0
INACTIVE_THRESHOLD_SECONDS = 120.0
DELETE_TIMEOUT_SECONDS = 1.0
_WAIT_SLICE_SECONDS = 1.0
_RETRY_SECONDS = 0.25
_HEARTBEATS_MISSED = 2.5
_STATUS_SLACK = 8
"""Room in the inbox queue beyond one pull's messages and heartbeats: its closing status."""
_WAKE: None = None
"""Put in an inbox queue to wake ``next()`` up without a message (closed, connection lost)."""


@dataclass(frozen=True, slots=True)
class StartPosition:
    """Where a consumer starts: after a stream sequence, at the first retained one, or new only.

    ``after_seq`` wins over ``from_start``; with neither, only messages published after the
    consumer was created are delivered.
    """

    after_seq: int | None = None
    from_start: bool = False


@dataclass(frozen=True, slots=True)
class StreamMessage:
    """One stored message as read by an ordered consumer."""

    seq: int
    subject: str
    data: bytes
    headers: dict[str, str] | None
    pending: int
    """How many matching messages were still stored after this one when it was delivered."""
    time: datetime


class OrderedConsumer:
    """Reads ``filter_subject`` of ``stream`` in order; ``await start()``, then ``next()``.

    Also an async iterator and an async context manager (``close()`` on exit).
    ``next()`` keeps going through NATS outages shorter than ``outage_seconds`` and raises
    ``EventsUnavailable`` after a longer one.
    """

    def __init__(
        self,
        conn: NatsConnection,
        *,
        stream: str,
        filter_subject: str,
        start: StartPosition,
        batch: int = DEFAULT_BATCH,
        heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
        expires_seconds: float = DEFAULT_EXPIRES_SECONDS,
        outage_seconds: float = DEFAULT_OUTAGE_SECONDS,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self._conn = conn
        self._stream = stream
        self._filter = filter_subject
        self._start = start
        self._batch = batch
        self._heartbeat = min(heartbeat_seconds, expires_seconds / 2)
        self._expires = expires_seconds
        self._outage = outage_seconds
        self._sub: Subscription | None = None
        self._inbox: asyncio.Queue[Msg | None] = asyncio.Queue()
        # One pull request is outstanding at a time: it delivers at most ``batch`` messages,
        # an idle heartbeat every ``heartbeat`` seconds until it expires, and one status.
        heartbeats = math.ceil(expires_seconds / self._heartbeat) if self._heartbeat > 0 else 0
        self._inbox_size = batch + heartbeats + _STATUS_SLACK
        self._overflowed = False
        self._consumer: str | None = None
        self._last_seq = 0  # the last stream sequence handed to the caller
        self._next_dseq = 1  # the consumer sequence expected next
        self._owed = 0  # messages the current pull request may still deliver
        self._quiet_since = time.monotonic()
        self._reconnects = 0
        self._initial_pending = 0
        self._closed = False
        self._resets = 0
        self._started = False
        self._slice_over = False  # the current wait for a delivery timed out

    @property
    def last_seq(self) -> int:
        """The stream sequence of the last message returned (0 before the first)."""
        return self._last_seq

    @property
    def initial_pending(self) -> int:
        """How many matching messages were stored after the start position at ``start()``."""
        return self._initial_pending

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def buffered(self) -> int:
        """Deliveries received from NATS and not yet taken by ``next()`` (bounded by about one
        pull batch, however slow the caller is)."""
        return self._inbox.qsize()

    @property
    def resets(self) -> int:
        """How many times the consumer was recreated (gaps, outages)."""
        return self._resets

    async def start(self) -> "OrderedConsumer":
        """Create the consumer; raises ``EventsUnavailable`` if NATS stays unreachable for
        ``RECONNECT_GRACE_SECONDS``.

        While connected, a stream that cannot answer yet (its leader being elected) is asked
        again for up to ``outage_seconds``: a failover is a pause here too."""
        start = self._start
        if start.after_seq is not None:
            after = max(start.after_seq, 0)
            policy, opt_start = api.DeliverPolicy.BY_START_SEQUENCE, after + 1
            self._last_seq = after
        elif start.from_start:
            policy, opt_start = api.DeliverPolicy.ALL, None
        else:
            policy, opt_start = api.DeliverPolicy.NEW, None
        self._reconnects = self._conn.reconnects
        try:
            info = await self._create_through_election(policy, opt_start)
        except BaseException:
            # Also when cancelled: the inbox may already be subscribed (the consumer, if the
            # server creates it, is deleted by ``_create``).
            await asyncio.shield(self._conn.run_detached(self._drop()))
            raise
        self._started = True
        self._initial_pending = info.num_pending or 0
        if info.delivered is not None:
            # For "new only", the server starts after its current last sequence: remember it,
            # so a consumer recreated before the first message neither replays nor skips.
            self._last_seq = max(self._last_seq, info.delivered.stream_seq)
        return self

    async def next(self) -> StreamMessage:
        """The next message in stream order; waits for it as long as needed."""
        if not self._started:
            raise RuntimeError("OrderedConsumer.start() was not awaited")
        outage_started: float | None = None
        while True:
            if self._closed:
                raise EventsUnavailable("event stream unavailable: the follower was closed")
            try:
                message = await self._next_once()
            except EventsUnavailable:
                now = time.monotonic()
                outage_started = outage_started or now
                if now - outage_started >= self._outage:
                    raise
                if self._conn.is_connected:
                    await asyncio.sleep(_RETRY_SECONDS)  # up, but the stream refused: retry
                else:
                    await self._conn.wait_reconnected(_RETRY_SECONDS * 2)
                continue
            outage_started = None
            if message is not None:
                return message

    async def _next_once(self) -> StreamMessage | None:
        """One step: a message, or ``None`` after handling a status, a gap or a reset."""
        if self._conn.reconnects != self._reconnects:
            self._reconnects = self._conn.reconnects
            await self._reset("reconnected")
            return None
        if self._sub is None or self._consumer is None:
            await self._reset("no consumer")
            return None
        if self._owed <= 0:
            await self._pull()
        inbox = self._inbox
        try:
            msg = inbox.get_nowait()
        except asyncio.QueueEmpty:
            if self._overflowed:
                # What was queued before the overflow is handed out; what was dropped is not
                # lost: the new consumer starts right after the last message handed out.
                await self._reset("inbox overflowed")
                return None
            if self._conn.client.is_closed:
                self._closed = True
                raise EventsUnavailable("event stream unavailable: connection closed") from None
            # A plain timer rather than ``asyncio.timeout``: this wait happens for nearly
            # every message of a live stream, and the timer costs less than half as much.
            self._slice_over = False
            timer = asyncio.get_running_loop().call_later(
                _WAIT_SLICE_SECONDS, self._end_slice, inbox
            )
            try:
                msg = await inbox.get()
            finally:
                timer.cancel()
            if msg is None and self._slice_over:
                if time.monotonic() - self._quiet_since > self._heartbeat * _HEARTBEATS_MISSED:
                    await self._reset("heartbeats missed")
                return None
        if msg is None:  # woken up: the loop in ``next()`` looks at the state again
            return None
        self._quiet_since = time.monotonic()
        status = (msg.headers or {}).get(api.Header.STATUS.value)
        if status:
            await self._on_status(status, msg)
            return None
        return await self._on_message(msg)

    async def _on_status(self, status: str, msg: Msg) -> None:
        if status == api.StatusCode.CONTROL_MESSAGE.value:  # idle heartbeat
            last = (msg.headers or {}).get(api.Header.LAST_CONSUMER.value)
            if last is not None and last.isdigit() and int(last) >= self._next_dseq:
                await self._reset("gap seen in heartbeat")
            return
        if status in (api.StatusCode.REQUEST_TIMEOUT.value, api.StatusCode.NO_MESSAGES.value):
            self._owed = 0  # the pull request ended: ask again
            return
        description = (msg.headers or {}).get(api.Header.DESCRIPTION.value, "")
        await self._reset(f"status {status} {description}".strip())

    async def _on_message(self, msg: Msg) -> StreamMessage | None:
        meta = delivery_metadata(msg.reply)
        if meta is None:
            return None
        stream_seq, consumer_seq = meta.stream_seq, meta.consumer_seq
        self._owed -= 1
        if consumer_seq != self._next_dseq:
            await self._reset(f"consumer sequence {consumer_seq}, expected {self._next_dseq}")
            return None
        self._next_dseq += 1
        if stream_seq <= self._last_seq:
            return None  # already handed out before a reset
        self._last_seq = stream_seq
        return StreamMessage(
            seq=stream_seq,
            subject=msg.subject,
            data=msg.data,
            headers=msg.headers,
            pending=meta.pending,
            time=meta.published_at,
        )

    async def _pull(self) -> None:
        if self._consumer is None or self._sub is None:
            raise EventsUnavailable("event stream unavailable: no consumer to pull from")
        subject = f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{self._stream}.{self._consumer}"
        request = {
            "batch": self._batch,
            "expires": int(self._expires * 1e9),
            "idle_heartbeat": int(self._heartbeat * 1e9),
        }
        with events_unavailable("pulling messages"):
            self._conn.require_connected()
            await self._conn.client.publish(
                subject, json.dumps(request).encode(), reply=self._sub.subject
            )
        self._owed = self._batch
        self._quiet_since = time.monotonic()

    async def _create_through_election(
        self, policy: api.DeliverPolicy, opt_start_seq: int | None
    ) -> api.ConsumerInfo:
        now = time.monotonic()
        deadline, reconnect_deadline = now + self._outage, now + RECONNECT_GRACE_SECONDS
        while True:
            if not self._conn.is_connected:
                # A reconnect (to another server of a cluster) is waited for, briefly.
                left = reconnect_deadline - time.monotonic()
                if left <= 0 or not await self._conn.wait_reconnected(left):
                    self._conn.require_connected()
                continue
            try:
                return await self._create(policy, opt_start_seq)
            except EventsUnavailable as exc:
                if not retriable(exc.__cause__) or time.monotonic() + _RETRY_SECONDS >= deadline:
                    raise
                if not self._conn.is_connected:
                    continue
            await asyncio.sleep(_RETRY_SECONDS)

    async def _create(
        self, policy: api.DeliverPolicy, opt_start_seq: int | None
    ) -> api.ConsumerInfo:
        """A fresh inbox and a fresh consumer (the old ones are dropped first)."""
        await self._drop()
        name = f"kgf_{secrets.token_hex(10)}"
        config = api.ConsumerConfig(
            name=name,
            deliver_policy=policy,
            opt_start_seq=opt_start_seq,
            ack_policy=api.AckPolicy.NONE,
            max_deliver=1,
            filter_subject=self._filter,
            replay_policy=api.ReplayPolicy.INSTANT,
            inactive_threshold=max(INACTIVE_THRESHOLD_SECONDS, 2 * self._expires),
            num_replicas=1,
            mem_storage=True,
        )
        nc = self._conn.client
        inbox: asyncio.Queue[Msg | None] = asyncio.Queue(maxsize=self._inbox_size)
        with events_unavailable("creating a consumer"):
            self._conn.require_connected()
            # One pull request is outstanding at a time, so the inbox holds at most one batch
            # plus heartbeats and a status: that is the bound (in messages; bytes are bounded
            # by batch x max payload, so no byte limit that could drop and loop is set).
            self._sub = await nc.subscribe(
                nc.new_inbox(),
                cb=self._deliver_to(inbox),
                pending_msgs_limit=2 * self._batch + 64,
                pending_bytes_limit=0,
            )
        self._inbox = inbox
        self._overflowed = False
        self._watch_connection()
        creating = asyncio.ensure_future(
            self._conn.guard(
                self._conn.js.add_consumer(self._stream, config=config),
                action="creating a consumer",
            )
        )
        try:
            info = await asyncio.shield(creating)
        except BaseException:
            # Cancelled, or the reply lost: the server may create it all the same. Delete it
            # once the request has ended (a delete sent earlier could overtake the create).
            self._conn.run_detached(self._delete_once_settled(creating, name))
            raise
        self._consumer = info.name
        self._next_dseq = 1
        self._owed = 0
        self._quiet_since = time.monotonic()
        return info

    def _deliver_to(self, inbox: "asyncio.Queue[Msg | None]") -> Callable[[Msg], Awaitable[None]]:
        """The subscription callback: queue each delivery for ``next()``, never wait.

        Each inbox gets its own callback, so a late delivery to a dropped one goes nowhere.
        """

        async def deliver(msg: Msg) -> None:
            try:
                inbox.put_nowait(msg)
            except asyncio.QueueFull:
                # Not expected (see ``_inbox_size``); handled like a gap, see ``_next_once``.
                if inbox is self._inbox:
                    self._overflowed = True

        return deliver

    def _watch_connection(self) -> None:
        """Wake a waiting ``next()`` as soon as the connection drops (or is closed)."""
        lost = self._conn.lost
        if not lost.done():
            lost.add_done_callback(self._on_lost)

    def _on_lost(self, _lost: "asyncio.Future[None]") -> None:
        self._wake(self._inbox)

    def _end_slice(self, inbox: "asyncio.Queue[Msg | None]") -> None:
        """The wait slice is over: wake ``next()`` to check the heartbeats."""
        self._slice_over = True
        self._wake(inbox)

    @staticmethod
    def _wake(inbox: "asyncio.Queue[Msg | None]") -> None:
        # A full inbox has nobody waiting on it.
        with contextlib.suppress(asyncio.QueueFull):
            inbox.put_nowait(_WAKE)

    async def _reset(self, reason: str) -> None:
        """Recreate the consumer right after the last message handed out."""
        self._resets += 1
        logger.debug("ordered consumer on %s reset: %s", self._filter, reason)
        await self._create(api.DeliverPolicy.BY_START_SEQUENCE, self._last_seq + 1)

    async def _drop(self) -> None:
        """Forget the current inbox and delete the current consumer (best effort, bounded)."""
        sub, consumer = self._sub, self._consumer
        self._sub = None
        self._consumer = None
        self._conn.lost.remove_done_callback(self._on_lost)
        self._wake(self._inbox)  # a reader waiting on this inbox looks at the state again
        if sub is not None and not self._conn.client.is_closed:
            try:
                await sub.unsubscribe()
            except CLEANUP_ERRORS as exc:
                logger.debug("unsubscribing a follower inbox: %s", exc)
        if consumer is not None and self._conn.is_connected:
            self._conn.run_detached(self._delete_consumer(consumer))

    async def _delete_once_settled(self, creating: "asyncio.Future[Any]", name: str) -> None:
        with contextlib.suppress(Exception):
            await creating
        if self._conn.is_connected:  # else it expires on its own (inactivity threshold)
            await self._delete_consumer(name)

    async def _delete_consumer(self, name: str) -> None:
        try:
            await asyncio.wait_for(
                self._conn.js.delete_consumer(self._stream, name), DELETE_TIMEOUT_SECONDS
            )
        except NATS_ERRORS as exc:
            # It expires on its own after the inactivity threshold.
            logger.debug("deleting consumer %s: %s", name, exc)

    async def close(self) -> None:
        """Stop reading: unsubscribe and delete the consumer. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await asyncio.shield(self._conn.run_detached(self._drop()))

    async def __aenter__(self) -> "OrderedConsumer":
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> "OrderedConsumer":
        return self

    async def __anext__(self) -> StreamMessage:
        try:
            return await self.next()
        except EventsUnavailable:
            if self._closed:  # closed by its owner while waiting: the iteration just ends
                raise StopAsyncIteration from None
            raise
