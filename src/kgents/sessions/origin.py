"""The follower of the client that started a turn, fed in process by the generation task.

The generation task hands it each event of the turn as soon as JetStream acknowledged it (an
``AckListener``), with its stream sequence, so the client reads the same events with the same
ids as any follower, without a round trip through a consumer. Its buffer is bounded: once it is
full (a client that does not read), it takes nothing more, and when the client has taken what
it holds, it follows the session in JetStream from the last sequence taken, missing nothing.
"""

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from kgents.sessions.ports import FollowedEvent, Follower, SessionEvent, SessionEventLog, each_event


@dataclass(frozen=True, slots=True)
class AckedEvent:
    """An event of the turn and the stream sequence its publish ack carried."""

    seq: int
    event: SessionEvent


class OriginFollower:
    """A ``Follower`` of one turn's events, offered by the generation task (``offer``)."""

    def __init__(self, *, events: SessionEventLog, session_id: str, limit: int) -> None:
        self._events = events
        self._session_id = session_id
        self._limit = max(limit, 1)
        self._buffer: deque[AckedEvent] = deque()
        self._after: int | None = None  # the last sequence handed out (or before the first)
        self._overflowed = False
        self._jetstream: Follower | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    @property
    def in_process(self) -> bool:
        """False once the client fell behind and reads JetStream instead."""
        return not self._overflowed

    def offer(self, event: SessionEvent, seq: int) -> None:
        """The ``AckListener``: keep ``event`` for the client, unless it fell behind."""
        if self._closed or self._overflowed:
            return
        if self._after is None:
            self._after = seq - 1
        if len(self._buffer) >= self._limit:
            self._overflowed = True  # this event and the next ones: read from JetStream
        else:
            self._buffer.append(AckedEvent(seq, event))
        self.wake()

    async def next_batch(self, wait_seconds: float | None = None) -> Sequence[FollowedEvent]:
        if self._closed:
            raise StopAsyncIteration
        if not self._buffer and self._overflowed:
            return await (await self._from_jetstream()).next_batch(wait_seconds)
        if not self._buffer and wait_seconds != 0:
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            timer = None if wait_seconds is None else loop.call_later(wait_seconds, self.wake)
            try:
                await waiter  # a plain future and timer: this wait comes once per event
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if self._closed:
                raise StopAsyncIteration
            if not self._buffer and self._overflowed:
                return await (await self._from_jetstream()).next_batch(0)
        batch = list(self._buffer)
        self._buffer.clear()
        if batch:
            self._after = batch[-1].seq
        return batch

    async def _from_jetstream(self) -> Follower:
        """The session's follower in JetStream after the last sequence taken."""
        if self._jetstream is None:
            self._jetstream = await self._events.open_follower(
                self._session_id, after_seq=self._after
            )
        return self._jetstream

    def wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        if self._jetstream is not None:
            self._jetstream.wake()

    def __aiter__(self) -> AsyncIterator[FollowedEvent]:
        return each_event(self)

    async def aclose(self) -> None:
        self._closed = True
        self.wake()
        self._buffer.clear()
        if self._jetstream is not None:
            await self._jetstream.aclose()
