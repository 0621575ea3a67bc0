"""JetStream publishing with cheap acks: pipelined batches and single acknowledged publishes.

A JetStream publish is a core NATS publish with a reply subject; the stream answers with an ack
(``{"stream": …, "seq": …}`` or ``{"error": …}``). nats-py's ``publish`` / ``publish_async``
make a random token, a future (under ``wait_for``) and a dataclass per message; here one
subscription per connection (``<inbox>.<batch>.<index>``) routes each ack to its batch, which
only counts acks and remembers sequences, or (``<inbox>.r.<n>``) to one waiting ``request``.
A batch's producer waits only when ``window`` acks are outstanding (until half are back) and at
``flush()``. Every wait is bounded by ``ack_timeout`` and ends at once when the connection drops
(acks sent to a dropped connection never arrive).
"""

import asyncio
import json
import logging
import re
import weakref
from functools import partial
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from kgents.errors import EventsUnavailable
from kgents.streaming.connection import NATS_ERRORS, NatsConnection, events_unavailable, failed

logger = logging.getLogger(__name__)

_NO_RESPONDERS = "503"
_SEQ = re.compile(rb'"seq"\s*:\s*(\d+)')
_REQUESTS = "r"  # the "batch" of single requests (batch ids are hexadecimal)
_PUBLISHING = "publishing an event"


class AckRouter:
    """Routes the acks of pipelined publishes on one connection to their batches."""

    def __init__(self, conn: NatsConnection) -> None:
        self._conn = conn
        self._prefix = conn.client.new_inbox()
        self._sub: Subscription | None = None
        self._lock = asyncio.Lock()
        self._batches: weakref.WeakValueDictionary[str, PipelinedBatch] = (
            weakref.WeakValueDictionary()
        )
        self._next_id = 0
        self._requests: dict[str, asyncio.Future[Msg | None]] = {}
        self._next_request = 0

    @property
    def connection(self) -> NatsConnection:
        return self._conn

    async def open_batch(
        self, *, window: int, ack_timeout: float, what: str = "events"
    ) -> "PipelinedBatch":
        """A new batch; the ack subscription is made on first use."""
        if self._sub is None:
            await self._subscribe()
        self._next_id += 1
        batch_id = format(self._next_id, "x")
        batch = PipelinedBatch(
            self._conn,
            reply_prefix=f"{self._prefix}.{batch_id}.",
            window=window,
            ack_timeout=ack_timeout,
            what=what,
        )
        self._batches[batch_id] = batch
        return batch

    async def request(
        self, subject: str, payload: bytes, headers: dict[str, str] | None, *, ack_timeout: float
    ) -> int:
        """Publish one message, wait for its ack and return its stream sequence.

        Raises ``EventsUnavailable``: at once, without a cause, when the connection drops (an
        ack sent to a dropped connection never arrives); else caused by a driver error or by
        what nats-py's ``JetStreamContext.publish`` raises: ``nats.errors.TimeoutError``
        without an ack within ``ack_timeout``, ``NoStreamResponseError`` when no stream
        answers, ``APIError.from_error`` when the stream refuses the message. The wait is a
        future that the ack, a timer or the connection's loss resolves: no timeout scope per
        message (``NatsConnection.guard``).
        """
        if self._sub is None:
            await self._subscribe()
        self._next_request += 1
        token = str(self._next_request)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg | None] = loop.create_future()
        self._requests[token] = future
        timer = loop.call_later(ack_timeout, _time_out, future)
        lost = self._conn.lost
        on_lost = partial(_end_wait, future)
        lost.add_done_callback(on_lost)
        try:
            await self._conn.client.publish(
                subject, payload, reply=f"{self._prefix}.{_REQUESTS}.{token}", headers=headers
            )
            ack = await future
            if ack is None:
                raise EventsUnavailable(
                    f"event stream unavailable: connection lost while {_PUBLISHING}"
                )
            failure = _ack_failure(ack)
            if failure is not None:
                raise failure
        except NATS_ERRORS as exc:
            raise failed(_PUBLISHING, exc) from exc
        finally:
            timer.cancel()
            lost.remove_done_callback(on_lost)
            del self._requests[token]
        return _ack_seq(ack)

    async def _subscribe(self) -> None:
        async with self._lock:
            if self._sub is None:
                with events_unavailable("subscribing to publish acks"):
                    self._sub = await self._conn.client.subscribe(
                        f"{self._prefix}.*.*", cb=self._on_ack
                    )

    async def _on_ack(self, msg: Msg) -> None:
        _, batch_id, index = msg.subject.rsplit(".", 2)
        if batch_id == _REQUESTS:
            future = self._requests.get(index)
            if future is not None and not future.done():
                future.set_result(msg)
            return
        batch = self._batches.get(batch_id)
        if batch is not None and index.isdigit():
            batch.on_ack(int(index), msg)


class PipelinedBatch:
    """Publishes messages without waiting for each ack; at most ``window`` outstanding."""

    def __init__(
        self,
        conn: NatsConnection,
        *,
        reply_prefix: str,
        window: int,
        ack_timeout: float,
        what: str,
    ) -> None:
        if window < 2:
            raise ValueError("window must be at least 2")
        self._conn = conn
        self._client = conn.client
        self._reply_prefix = reply_prefix
        self._window = window
        self._ack_timeout = ack_timeout
        self._what = what
        self._sent = 0
        self._acked = 0
        self._target = 0  # wake the waiter once this many acks are in
        self._waiter: asyncio.Future[None] | None = None
        self._failure: str | None = None
        self.seqs: dict[int, int] = {}
        """Stream sequence of each acknowledged message, by publish index (0-based)."""

    @property
    def sent(self) -> int:
        return self._sent

    @property
    def acknowledged(self) -> int:
        return self._acked

    async def publish(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> None:
        """Send one message; waits for acks only when the window is full."""
        self._raise_failure()
        if not self._client.is_connected:
            raise EventsUnavailable("event stream unavailable: NATS is disconnected")
        # Count it as sent before the write: the driver may yield while flushing a full
        # buffer, and the ack may then arrive before the call returns.
        index = self._sent
        self._sent += 1
        try:
            await self._client.publish(
                subject, payload, reply=f"{self._reply_prefix}{index}", headers=headers
            )
        except NATS_ERRORS as exc:
            self._fail(f"publish failed ({exc})")
            raise EventsUnavailable(
                f"event stream unavailable: publishing {self._what} failed"
            ) from exc
        if self._sent - self._acked >= self._window:
            await self._wait_for(self._sent - self._window // 2)

    async def flush(self) -> None:
        """Wait until every message sent so far is acknowledged."""
        await self._wait_for(self._sent)

    def on_ack(self, index: int, msg: Msg) -> None:
        """Count one ack (called by the router for this batch's reply subjects)."""
        if index >= self._sent or index in self.seqs or self._failure is not None:
            return
        error = _ack_error(msg)
        if error is not None:
            self._fail(f"{self._what} not stored ({error})")
        else:
            self.seqs[index] = _ack_seq(msg)
            self._acked += 1
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._failure is not None or self._acked >= self._target:
                waiter.set_result(None)

    async def _wait_for(self, acked: int) -> None:
        self._raise_failure()
        if self._acked >= acked:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        lost = self._conn.lost

        def wake(_: object = None) -> None:
            if not waiter.done():
                waiter.set_result(None)

        self._waiter, self._target = waiter, acked
        lost.add_done_callback(wake)
        timer = loop.call_later(self._ack_timeout, wake)
        try:
            await waiter
        finally:
            timer.cancel()
            lost.remove_done_callback(wake)
            self._waiter = None
        if self._failure is None and self._acked < acked:
            reason = "connection lost" if lost.done() else f"no ack within {self._ack_timeout}s"
            self._fail(f"{acked - self._acked} {self._what} not acknowledged ({reason})")
        self._raise_failure()

    def _fail(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
            logger.warning("publishing %s failed: %s", self._what, reason)

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise EventsUnavailable(f"event stream unavailable: {self._failure}")


def _time_out(future: "asyncio.Future[Msg | None]") -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


def _end_wait(future: "asyncio.Future[Msg | None]", _lost: object) -> None:
    """The connection dropped: ``None`` instead of an ack."""
    if not future.done():
        future.set_result(None)


def _ack_error(msg: Msg) -> str | None:
    failure = _ack_failure(msg)
    if failure is None:
        return None
    if isinstance(failure, nats.js.errors.APIError):
        return failure.description or str(failure)
    return "no stream for the subject"


def _ack_failure(msg: Msg) -> nats.errors.Error | None:
    """The exception nats-py's ``JetStreamContext.publish`` raises for this ack, if any."""
    headers = msg.headers
    if headers and headers.get("Status") == _NO_RESPONDERS:
        return nats.js.errors.NoStreamResponseError()
    if b'"error"' not in msg.data:
        return None
    try:
        body: Any = json.loads(msg.data)
    except ValueError:
        return nats.js.errors.APIError(description="unreadable ack")
    error = body.get("error") if isinstance(body, dict) else None
    if error is None:
        return None
    if not isinstance(error, dict):
        return nats.js.errors.APIError(description=str(error))
    try:
        nats.js.errors.APIError.from_error(error)  # raises the error's class (by its code)
    except nats.js.errors.APIError as exc:
        return exc
    except (KeyError, TypeError):  # not the shape JetStream sends
        pass
    return nats.js.errors.APIError(description=str(error))


def _ack_seq(msg: Msg) -> int:
    match = _SEQ.search(msg.data)  # cheaper than parsing the whole ack as JSON
    return int(match.group(1)) if match else 0
