"""One JetStream follower per session per process, fanned out in memory to the local followers.

Every follower of a session in this process (SSE responses, resumes, tails) reads from one
*feed*: an ordered consumer whose messages are decoded once and appended to each follower's
bounded mailbox. NATS then delivers an event to a process once instead of once per follower,
and the JSON, headers and metadata are parsed once.

Exactness is per follower, by stream sequence: a mailbox only accepts sequences above the last
one it accepted, and a follower is *attached* to the feed only when the feed is known to
deliver every event after that sequence (the feed's position, the last sequence it read, is at
or below it). Otherwise the follower *catches up* on a private ordered consumer started right
after its last sequence, and is attached as soon as it reaches the feed's position (checked on
both sides: after each private event, and by the feed before each event it hands out).

- A new follower whose start is at or after the feed's position is attached at once; one
  slightly behind it is served from the feed's ring of recent events (a quick reconnect with
  ``Last-Event-ID``, the POST stream of a turn that already published); one further behind
  catches up on its own consumer (a replay).
- A follower whose mailbox is full (a client that does not read) is detached: the feed never
  waits for it. Once the client takes its events, it catches up on its own consumer from its
  last sequence, so it loses nothing, and joins again.
- The feed of a session starts with its first follower and stops with its last one. If it
  fails (a NATS outage longer than the consumer tolerates), its followers get the error after
  the events already in their mailboxes.
"""

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from kgents.errors import EventsUnavailable
from kgents.streaming.consumer import OrderedConsumer, StartPosition, StreamMessage
from kgents.streaming.subjects import NO_PREFIX, Namespace
from kgents.streaming.wire import ReceivedEvent, decode_session_event

logger = logging.getLogger(__name__)

ConsumerFactory = Callable[[str, StartPosition], OrderedConsumer]
"""A new (not yet started) ordered consumer of a session's events from a position."""
LastSequence = Callable[[str], Awaitable[int | None]]
"""The stream sequence of a session's latest stored event (``None``: none)."""


def _decode(message: StreamMessage, ns: Namespace) -> ReceivedEvent | None:
    return decode_session_event(
        seq=message.seq,
        subject=message.subject,
        payload=message.data,
        headers=message.headers,
        ns=ns,
    )


def _resolve(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)


class SessionFollower:
    """An open follower of one session: events in stream order, each exactly once.

    ``next_batch(wait_seconds)`` returns every event already received (waiting up to that
    for the first, ``[]`` when none came or ``wake()`` was called); it is also an async
    iterator of single events. Ends with ``StopAsyncIteration`` once closed, or raises
    ``EventsUnavailable`` after the events received before the stream failed.
    """

    def __init__(self, hub: "SessionHub", session_id: str, *, after_seq: int, limit: int) -> None:
        self._hub = hub
        self._session_id = session_id
        self._items: deque[ReceivedEvent] = deque()
        self._limit = limit
        self._accepted_seq = after_seq  # the last sequence put in the mailbox (or the start)
        self._taken_seq = after_seq  # the last sequence handed to the caller
        self._error: EventsUnavailable | None = None
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        self._feed: _Feed | None = None
        self._reader: asyncio.Task[None] | None = None
        self._reading = False  # the private reader is past its start, reading events

    @property
    def last_seq(self) -> int:
        """The stream sequence of the last event read (or the start position)."""
        return self._taken_seq

    @property
    def attached(self) -> bool:
        """True while events come from the session's shared feed (not a private consumer)."""
        return self._feed is not None and self in self._feed.attached

    @property
    def buffered(self) -> int:
        """Events received and not yet taken (at most the mailbox limit)."""
        return len(self._items)

    # --- the reading side -------------------------------------------------------------------

    async def next_batch(self, wait_seconds: float | None = None) -> list[ReceivedEvent]:
        """Every event received so far, in order; waits up to ``wait_seconds`` for the first."""
        if not self._items:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            await self._wait(wait_seconds)
            if not self._items:
                if self._error is not None:
                    raise self._error
                if self._closed:
                    raise StopAsyncIteration
                return []
        items = list(self._items)
        self._items.clear()
        self._taken_seq = items[-1].seq
        self._made_room()
        return items

    def wake(self) -> None:
        """Make a waiting ``next_batch`` return now (with ``[]`` if nothing came)."""
        if self._waiter is not None:
            _resolve(self._waiter)

    def __aiter__(self) -> "SessionFollower":
        return self

    async def __anext__(self) -> ReceivedEvent:
        while not self._items:
            if self._error is not None:
                raise self._error
            if self._closed:
                raise StopAsyncIteration
            await self._wait(None)
        received = self._items.popleft()
        self._taken_seq = received.seq
        self._made_room()
        return received

    async def _wait(self, wait_seconds: float | None) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if wait_seconds is None else loop.call_later(wait_seconds, _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _made_room(self) -> None:
        if self._room is not None:
            _resolve(self._room)

    # --- the writing side (the feed or the private reader) ----------------------------------

    def _offer(self, received: ReceivedEvent) -> bool:
        """Put ``received`` in the mailbox unless already there; ``False`` when it is full."""
        if received.seq <= self._accepted_seq:
            return True
        if len(self._items) >= self._limit:
            return False
        self._items.append(received)
        self._accepted_seq = received.seq
        if self._waiter is not None:
            _resolve(self._waiter)
        return True

    def _has_room(self) -> bool:
        return len(self._items) < self._limit

    def _fail(self, error: EventsUnavailable) -> None:
        if self._error is None:
            self._error = error
        self.wake()

    def _catch_up(self, consumer: OrderedConsumer | None) -> None:
        """Read on a private consumer (``None``: open one once there is room) until attached."""
        self._reading = consumer is not None
        self._reader = asyncio.create_task(self._read_privately(consumer))

    async def _read_privately(self, consumer: OrderedConsumer | None) -> None:
        try:
            if consumer is None:
                await self._wait_for_room()
                if self._try_attach():
                    return
                consumer = self._hub.new_consumer(
                    self._session_id, StartPosition(after_seq=self._accepted_seq)
                )
                await consumer.start()
                self._reading = True
            while True:
                await self._wait_for_room()
                message = await consumer.next()
                received = _decode(message, self._hub.ns)
                if received is None or not self._offer(received):
                    continue  # (a full mailbox cannot happen: room was awaited, one reader)
                if self._try_attach():
                    return
        except EventsUnavailable as exc:
            self._fail(exc)
        finally:
            self._reading = False
            if consumer is not None:
                await consumer.close()

    async def _wait_for_room(self) -> None:
        while not self._has_room():
            self._room = asyncio.get_running_loop().create_future()
            try:
                await self._room
            finally:
                self._room = None

    def _try_attach(self) -> bool:
        feed = self._feed
        if feed is None or feed.dead or not self._has_room():
            return False
        if self._accepted_seq < feed.position:
            return False
        feed.attach(self)
        self._reader = None  # this task ends now (the caller returns)
        return True

    def _attach_from_feed(self) -> None:
        """Called by the feed: stop the private reader, events come from the feed now."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()

    async def aclose(self) -> None:
        """Stop following: leave the feed (stopping it if it was the last) and close any
        private consumer."""
        if self._closed:
            return
        self._closed = True
        self.wake()
        reader, self._reader = self._reader, None
        feed, self._feed = self._feed, None  # the reader cannot attach to it any more
        if reader is not None:
            reader.cancel()
        # Shielded: a close is often awaited by a task being cancelled (a response whose
        # client left); cut short, it would leave this follower on its feed for good.
        await asyncio.shield(self._finish_closing(reader, feed))

    async def _finish_closing(
        self, reader: "asyncio.Task[None] | None", feed: "_Feed | None"
    ) -> None:
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)
        if feed is not None:
            await feed.leave(self)

    async def __aenter__(self) -> "SessionFollower":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Feed:
    """The one ordered consumer of a session in this process, and who reads from it."""

    def __init__(self, hub: "SessionHub", session_id: str, *, ring: int) -> None:
        self._hub = hub
        self.session_id = session_id
        self.attached: list[SessionFollower] = []
        self.catching_up: set[SessionFollower] = set()
        self.position = 0  # the last stream sequence read (or the start position)
        self.dead = False
        self.started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        # Recent events with the feed's position before each: joiners slightly behind start
        # from here instead of a consumer of their own.
        self._ring: deque[tuple[int, ReceivedEvent]] = deque(maxlen=ring)
        self._consumer: OrderedConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, position: StartPosition) -> None:
        consumer = self._hub.new_consumer(self.session_id, position)
        try:
            await consumer.start()
        except BaseException:
            self.dead = True
            self.started.set_result(False)
            raise
        self._consumer = consumer
        self.position = consumer.last_seq
        self.started.set_result(True)
        self._task = asyncio.create_task(self._run(consumer))

    def join(self, follower: SessionFollower) -> bool:
        """Attach ``follower`` if the feed (or its ring) covers everything after its start."""
        start = follower._accepted_seq
        follower._feed = self
        if start >= self.position:
            self.attached.append(follower)
            return True
        ring = self._ring
        if ring and ring[0][0] <= start:
            for _, received in ring:
                follower._offer(received)  # the ring is no longer than a mailbox
            self.attached.append(follower)
            return True
        self.catching_up.add(follower)
        return False

    def attach(self, follower: SessionFollower) -> None:
        self.catching_up.discard(follower)
        if follower not in self.attached:
            self.attached.append(follower)

    async def leave(self, follower: SessionFollower) -> None:
        self.catching_up.discard(follower)
        with contextlib.suppress(ValueError):
            self.attached.remove(follower)
        if not self.attached and not self.catching_up:
            await self.stop()

    async def stop(self) -> None:
        self._hub.forget(self)
        self.dead = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        elif self._consumer is not None:
            await self._consumer.close()

    async def _run(self, consumer: OrderedConsumer) -> None:
        try:
            while True:
                message = await consumer.next()
                previous, self.position = self.position, message.seq
                received = _decode(message, self._hub.ns)
                if received is None:
                    continue
                self._ring.append((previous, received))
                if self.catching_up:
                    self._attach_caught_up(previous)
                behind: list[SessionFollower] | None = None
                for follower in self.attached:
                    if not follower._offer(received):
                        behind = behind or []
                        behind.append(follower)
                if behind:
                    for follower in behind:
                        self.attached.remove(follower)
                        self.catching_up.add(follower)
                        follower._catch_up(None)
        except EventsUnavailable as exc:
            self._hub.forget(self)
            self.dead = True
            for follower in self.attached:
                follower._fail(exc)
            self.attached.clear()
        finally:
            await consumer.close()

    def _attach_caught_up(self, previous: int) -> None:
        """Followers on a private consumer that hold everything up to ``previous`` join now."""
        ready = [
            f
            for f in self.catching_up
            if f._reading and f._accepted_seq >= previous and f._has_room()
        ]
        for follower in ready:
            self.catching_up.discard(follower)
            self.attached.append(follower)
            follower._attach_from_feed()


class SessionHub:
    """The feeds of this process, one per followed session."""

    def __init__(
        self,
        new_consumer: ConsumerFactory,
        last_sequence: LastSequence,
        *,
        mailbox: int,
        ring: int,
        ns: Namespace = NO_PREFIX,
    ) -> None:
        if mailbox < 1 or not 0 <= ring <= mailbox:
            raise ValueError("mailbox must be at least 1 and ring between 0 and mailbox")
        self.new_consumer = new_consumer
        self.ns = ns
        """Whose subjects the events are read from (to decode them)."""
        self._last_sequence = last_sequence
        self._mailbox = mailbox
        self._ring = ring
        self._feeds: dict[str, _Feed] = {}

    @property
    def feeds(self) -> int:
        """Sessions with a running feed in this process."""
        return len(self._feeds)

    @property
    def followers(self) -> int:
        """Open followers of this process's feeds."""
        return sum(len(feed.attached) + len(feed.catching_up) for feed in self._feeds.values())

    @property
    def private_readers(self) -> int:
        """Followers catching up on a reader (and consumer) of their own."""
        return sum(
            1
            for feed in self._feeds.values()
            for follower in feed.catching_up
            if follower._reader is not None
        )

    def forget(self, feed: _Feed) -> None:
        if self._feeds.get(feed.session_id) is feed:
            del self._feeds[feed.session_id]

    async def open(
        self, session_id: str, *, after_seq: int | None, from_start: bool
    ) -> SessionFollower:
        """A follower of ``session_id`` from the given position (see ``StartPosition``).

        A session's feed starts at the live end, whatever its first follower asked for: a
        follower replaying older events catches up on a consumer of its own, so a long replay
        never holds back the live followers, and a position past the session's last event
        follows from there (new events only). Raises ``EventsUnavailable`` here when NATS
        cannot serve it."""
        while True:
            feed = self._feeds.get(session_id)
            if feed is None:
                live = after_seq is None and not from_start
                end = None if live else await self._last_or_zero(session_id)
                if session_id in self._feeds:
                    continue  # another follower started the feed meanwhile: join it
                feed = self._feeds[session_id] = _Feed(self, session_id, ring=self._ring)
                try:
                    await feed.start(StartPosition(after_seq=end))
                except BaseException:
                    self.forget(feed)
                    raise
                if live:
                    first = self._follower(session_id, feed.position)
                    feed.join(first)
                    return first
            elif not feed.started.done():
                await asyncio.shield(feed.started)
                continue
            elif feed.dead:
                self.forget(feed)
                continue
            try:
                joined = await self._join(
                    feed, session_id, after_seq=after_seq, from_start=from_start
                )
            except BaseException:
                if not feed.attached and not feed.catching_up:
                    await feed.stop()  # nobody follows it (it may have been started for us)
                raise
            if joined is not None:
                return joined

    async def _last_or_zero(self, session_id: str) -> int:
        return await self._last_sequence(session_id) or 0

    async def _join(
        self, feed: _Feed, session_id: str, *, after_seq: int | None, from_start: bool
    ) -> SessionFollower | None:
        position = feed.position
        if after_seq is not None:
            start = max(after_seq, 0)
            if start > position:
                # Ahead of the feed: up to the session's last event (the feed may not have
                # read it yet), never past it. Every event at or below ``position`` or the
                # answer is counted, so nothing the client has not seen is skipped.
                start = min(start, max(await self._last_or_zero(session_id), position))
        elif from_start:
            start = 0
        else:
            # Only new events: after the session's last stored event. No session event is at
            # or below the feed's position taken before asking without being counted in the
            # answer, so the larger of the two is exact and never behind the feed.
            start = max(await self._last_or_zero(session_id), position)
        if feed.dead:
            return None  # the feed went away meanwhile: start again
        follower = self._follower(session_id, start)
        if feed.join(follower):
            return follower
        consumer = self.new_consumer(session_id, StartPosition(after_seq=start))
        try:
            await consumer.start()
        except BaseException:
            feed.catching_up.discard(follower)
            follower._feed = None
            raise
        follower._catch_up(consumer)
        return follower

    def _follower(self, session_id: str, start: int) -> SessionFollower:
        return SessionFollower(self, session_id, after_seq=start, limit=self._mailbox)
