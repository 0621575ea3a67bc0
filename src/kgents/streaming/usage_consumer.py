"""The durable pull consumer ``metering`` on ``kgent-usage``: usage events in batches, each
message with its own ack, nak and term.

The consumer is shared by every replica: each ``fetch`` is a pull request, and JetStream hands
each pending message to one request at a time, so N processes split the work without any
coordination of their own. Its configuration (``ConsumerSpec``) is created or brought up to
date idempotently, like the streams in ``topology``:

====================  =====================================================================
deliver policy        all (a new consumer starts at the first event still in the stream)
ack policy            explicit (one ack per message, after the event is stored)
ack wait              30 s (the processor keeps a held batch alive with ``in_progress``)
max deliver           10 (the processor parks an event before the server gives up on it)
max ack pending       1,000 (10 batches of 100 in flight across all replicas)
filter subject        ``kgent.usage.>``
====================  =====================================================================

Each message becomes a ``UsageDelivery``: the decoded ``UsageEvent`` (or, for a message that
is not a valid CloudEvent, the reason and what was received), its delivery count and its
stream position. Driver errors become ``EventsUnavailable``; every wait is bounded.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from kgents.errors import EventsUnavailable, InvalidInput
from kgents.metering import cloudevents
from kgents.records import UsageEvent
from kgents.streaming.connection import CLEANUP_ERRORS, NatsConnection, events_unavailable
from kgents.streaming.delivery import DeliveryMetadata, delivery_metadata
from kgents.streaming.subjects import NO_PREFIX, Namespace

logger = logging.getLogger(__name__)

METERING_CONSUMER = NO_PREFIX.metering_consumer
ACK_WAIT_SECONDS = 30.0
MAX_DELIVER = 10
MAX_ACK_PENDING = 1000
FETCH_BATCH = 100
FETCH_MAX_WAIT_SECONDS = 1.0
FLUSH_TIMEOUT_SECONDS = 5  # nats-py takes whole seconds
_EXPIRY_GRACE_SECONDS = 0.5  # for the server's 408 at the end of a request
_MAX_SHOWN_PAYLOAD = 4096  # characters of an undecodable message kept for its dead letter

ConsumerAction = Literal["created", "updated", "unchanged"]


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """What the durable consumer must look like; only these fields are managed here."""

    name: str = METERING_CONSUMER
    stream: str = NO_PREFIX.usage_stream
    filter_subject: str = NO_PREFIX.usage_subjects
    ack_wait_seconds: float = ACK_WAIT_SECONDS
    max_deliver: int = MAX_DELIVER
    max_ack_pending: int = MAX_ACK_PENDING
    description: str = "kgents metering processor: usage events into the meter store"

    @classmethod
    def in_namespace(cls, ns: Namespace, *, ack_wait_seconds: float) -> "ConsumerSpec":
        """The consumer of deployment ``ns`` (its prefixed name, stream and subjects)."""
        return cls(
            name=ns.metering_consumer,
            stream=ns.usage_stream,
            filter_subject=ns.usage_subjects,
            ack_wait_seconds=ack_wait_seconds,
        )

    def config(self) -> api.ConsumerConfig:
        return api.ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            description=self.description,
            deliver_policy=api.DeliverPolicy.ALL,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_seconds,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            filter_subject=self.filter_subject,
        )

    def matches(self, config: api.ConsumerConfig) -> bool:
        """True when ``config`` (as the server reports it) has every managed field."""
        return (
            config.durable_name == self.name
            and _enum_value(config.deliver_policy) == api.DeliverPolicy.ALL.value
            and _enum_value(config.ack_policy) == api.AckPolicy.EXPLICIT.value
            and abs((config.ack_wait or 0.0) - self.ack_wait_seconds) < 1e-6
            and config.max_deliver == self.max_deliver
            and config.max_ack_pending == self.max_ack_pending
            and config.filter_subject == self.filter_subject
        )


async def ensure_usage_consumer(
    conn: NatsConnection, spec: ConsumerSpec = ConsumerSpec()
) -> ConsumerAction:
    """Create the durable consumer, or update it when a managed field differs.

    Safe to run from every replica at once. Raises ``EventsUnavailable`` when NATS is down,
    the stream is missing, or the server refuses the change (for example a different deliver
    policy, which JetStream cannot change on an existing consumer).
    """
    conn.require_connected()
    js = conn.js
    with events_unavailable(f"setting up consumer {spec.name}"):
        try:
            info = await js.consumer_info(spec.stream, spec.name)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(spec.stream, config=spec.config())
            return "created"
        if spec.matches(info.config):
            return "unchanged"
        # Consumer create with the same name and no action is "create or update" (2.10+).
        await js.add_consumer(spec.stream, config=spec.config())
        return "updated"


class UsageDelivery:
    """One delivered message: the event (or why there is none) and how to settle it.

    Settling is idempotent: after the first ``ack``, ``nak`` or ``term`` the others do nothing,
    so a caller cannot double-ack. ``in_progress`` may be called any number of times before.
    """

    __slots__ = (
        "_msg",
        "_settled",
        "attempts",
        "event",
        "payload",
        "pending",
        "problem",
        "published_at",
        "stream_seq",
    )

    def __init__(self, msg: Msg, metadata: "DeliveryMetadata") -> None:
        self._msg = msg
        self._settled = False
        self.attempts: int = metadata.delivered
        """How many times this message has been delivered, this time included."""
        self.stream_seq: int = metadata.stream_seq
        self.pending: int = metadata.pending
        """Messages still waiting for the consumer after this one."""
        self.published_at: datetime = metadata.published_at
        self.event: UsageEvent | None = None
        self.problem: str | None = None
        self.payload: Mapping[str, Any]
        try:
            self.payload = cloudevents.load_json(msg.data)
            self.event = cloudevents.decode_event(self.payload, default_time=self.published_at)
        except InvalidInput as exc:
            self.problem = f"undecodable usage event on {msg.subject}: {exc.message}"
            self.payload = _received(msg)

    @property
    def settled(self) -> bool:
        return self._settled

    async def ack(self) -> None:
        """Done: never deliver again."""
        if self._settle():
            with events_unavailable(f"acknowledging usage event {self.stream_seq}"):
                await self._msg.ack()

    async def nak(self, *, delay: float | None = None) -> None:
        """Deliver again, after ``delay`` seconds (at once without one)."""
        if self._settle():
            with events_unavailable(f"refusing usage event {self.stream_seq}"):
                await self._msg.nak(delay=delay)

    async def term(self) -> None:
        """Given up on: never deliver again (the processor parked it first)."""
        if self._settle():
            with events_unavailable(f"terminating usage event {self.stream_seq}"):
                await self._msg.term()

    async def in_progress(self) -> None:
        """Still working on it: restart the ack wait without counting a delivery."""
        if not self._settled:
            with events_unavailable("extending an ack wait"):
                await self._msg.in_progress()

    def _settle(self) -> bool:
        """Mark settled; False when it already was (the caller then sends nothing)."""
        if self._settled:
            return False
        self._settled = True
        return True


class UsageConsumer:
    """The ``metering`` consumer, bound lazily: ``fetch`` creates or updates it (and subscribes
    an inbox for its pull requests) on first use and again after any failure, so it rides out
    NATS outages, restarts and a deleted consumer. ``close()`` unsubscribes but keeps the
    durable consumer.

    Pull requests are made here rather than with nats-py's ``fetch`` so that nothing delivered
    is ever stranded on the client: a fetch that is cancelled (a replica shutting down) naks
    what it had collected, and ``close()`` naks what the server delivered to the abandoned
    request meanwhile. Stranded messages would come back only after the ack wait.
    """

    def __init__(self, conn: NatsConnection, *, spec: ConsumerSpec = ConsumerSpec()) -> None:
        self._conn = conn
        self._spec = spec
        self._sub: Subscription | None = None
        # What the server delivers to the inbox, put here by the subscription's callback: a
        # fetch cancelled while it waits leaves an item in the queue, never half-taken (as
        # nats-py's ``next_msg`` can, its ``wait_for`` losing a message it already took).
        self._delivered: asyncio.Queue[Msg] = asyncio.Queue()
        self._inbox = ""
        self._requests = 0
        self._next_subject = f"{api.DEFAULT_PREFIX}.CONSUMER.MSG.NEXT.{spec.stream}.{spec.name}"

    @property
    def max_deliver(self) -> int:
        return self._spec.max_deliver

    @property
    def ack_wait_seconds(self) -> float:
        return self._spec.ack_wait_seconds

    async def start(self) -> None:
        """Create or update the consumer and subscribe the inbox of its pull requests."""
        if self._sub is not None:
            return
        await ensure_usage_consumer(self._conn, self._spec)
        self._inbox = self._conn.client.new_inbox()
        delivered: asyncio.Queue[Msg] = asyncio.Queue()

        async def deliver(msg: Msg) -> None:
            delivered.put_nowait(msg)

        with events_unavailable(f"subscribing to consumer {self._spec.name}"):
            self._sub = await self._conn.client.subscribe(f"{self._inbox}.*", cb=deliver)
        self._delivered = delivered

    async def fetch(
        self,
        *,
        batch: int = FETCH_BATCH,
        max_wait: float = FETCH_MAX_WAIT_SECONDS,
        no_wait: bool = False,
    ) -> list[UsageDelivery]:
        """Up to ``batch`` messages, gathered for at most ``max_wait`` seconds: one pull
        request that the server fills with what is pending and then with what arrives, until
        the batch is full or the request expires. With ``no_wait`` the server hands over only
        what is pending when the request reaches it and ends it at once (no expiry, so a
        server slow to read the request still delivers); ``max_wait`` then bounds only the
        wait for its answer. An empty list when nothing came. Raises ``EventsUnavailable``
        when NATS is down or refuses the request."""
        if batch < 1 or max_wait <= 0:
            raise ValueError("batch must be at least 1 and max_wait positive")
        await self.start()
        self._requests += 1
        reply = f"{self._inbox}.{self._requests}"
        pull: dict[str, Any] = {"batch": batch}
        if no_wait:
            pull["no_wait"] = True
        else:
            pull["expires"] = int(max_wait * 1e9)
        request = json.dumps(pull).encode()
        try:
            self._conn.require_connected()  # before the coroutine exists: guard checks it too
            with events_unavailable("requesting usage events"):
                await self._conn.client.publish(self._next_subject, request, reply=reply)
            messages = await self._conn.guard(
                self._collect(reply, batch, max_wait), action="fetching usage events"
            )
        except EventsUnavailable:
            await self._unbind()  # the consumer may be gone: set it up again next time
            raise
        deliveries = []
        for msg in messages:
            metadata = delivery_metadata(msg.reply)
            if metadata is None:
                logger.warning("skipping a message without JetStream metadata on %s", msg.subject)
                continue
            deliveries.append(UsageDelivery(msg, metadata))
        return deliveries

    async def _collect(self, reply: str, batch: int, max_wait: float) -> list[Msg]:
        if self._sub is None:
            raise EventsUnavailable("event stream unavailable: no metering subscription")
        delivered = self._delivered
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_wait + _EXPIRY_GRACE_SECONDS
        collected: list[Msg] = []
        try:
            while len(collected) < batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    async with asyncio.timeout(remaining):
                        msg = await delivered.get()
                except TimeoutError:
                    break
                headers = msg.headers or {}
                status = headers.get(api.Header.STATUS.value)
                if not status:
                    collected.append(msg)  # a delivery (late ones for older requests too)
                elif msg.subject == reply and _request_ended(status, headers):
                    break
                elif msg.subject == reply and status != api.StatusCode.CONTROL_MESSAGE.value:
                    description = headers.get(api.Header.DESCRIPTION.value, "")
                    raise EventsUnavailable(
                        f"event stream unavailable: pull request refused ({status} {description})"
                    )
        except BaseException:
            await _nak_all(collected)  # cancelled or failed: nothing stays stranded here
            raise
        return collected

    async def flush(self) -> None:
        """Wait until the acks written so far reached the server (a PING round trip)."""
        self._conn.require_connected()  # before the coroutine exists: guard checks it too
        await self._conn.guard(
            self._conn.client.flush(timeout=FLUSH_TIMEOUT_SECONDS), action="flushing acks"
        )

    async def close(self) -> None:
        """Stop pulling; the durable consumer and its position stay on the server."""
        await self._unbind()

    async def _unbind(self) -> None:
        sub, self._sub = self._sub, None
        if sub is None:
            return
        with contextlib.suppress(*CLEANUP_ERRORS):
            if self._conn.is_connected:
                # UNSUB, a PING round trip (the server has seen the UNSUB: an open pull
                # request without interest gets nothing more), then every message it sent
                # before handed to ``deliver``.
                await asyncio.wait_for(sub.drain(), timeout=1.0)  # type: ignore[no-untyped-call]
            else:
                await asyncio.wait_for(sub.unsubscribe(), timeout=1.0)
        leftovers = []
        while not self._delivered.empty():
            msg = self._delivered.get_nowait()
            if not (msg.headers or {}).get(api.Header.STATUS.value):
                leftovers.append(msg)
        await _nak_all(leftovers)


def _request_ended(status: str, headers: Mapping[str, str]) -> bool:
    """Whether a status answers "this pull request is over" (nothing more will come)."""
    if status in (api.StatusCode.NO_MESSAGES.value, api.StatusCode.REQUEST_TIMEOUT.value):
        return True
    # 409 "Exceeded MaxWaiting" / "Exceeded MaxRequestBatch": busy, try again next time.
    description = headers.get(api.Header.DESCRIPTION.value, "")
    return status == api.StatusCode.CONFLICT.value and description.startswith("Exceeded")


async def _nak_all(messages: list[Msg]) -> None:
    """Hand messages back for immediate redelivery, best effort (the ack wait is the backstop)."""
    for msg in messages:
        with contextlib.suppress(*CLEANUP_ERRORS):
            await msg.nak()


def _received(msg: Msg) -> dict[str, Any]:
    """What an undecodable message carried, bounded, for its dead letter."""
    text = msg.data.decode("utf-8", errors="replace")
    shown = text[:_MAX_SHOWN_PAYLOAD]
    return {"nats_subject": msg.subject, "payload": shown, "truncated": len(text) > len(shown)}


def _enum_value(value: object) -> object:
    return getattr(value, "value", value)
