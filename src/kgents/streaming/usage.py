"""Usage events to the ``kgent-usage`` stream, for the outbox relay (``UsagePublisher``).

Each event is published as CloudEvents JSON on ``kgent.usage.<type>`` with
``Nats-Msg-Id: <source>:<id>``, pipelined; the call returns only when every event is
acknowledged. A repeat (the relay died after publishing, before marking rows sent) is absorbed
by JetStream's duplicate window and, behind it, by the meter store's unique ``(source, id)``.
"""

from collections.abc import Sequence

from kgents.metering.relay import StoredUsageEvent
from kgents.records import UsageEvent
from kgents.streaming.connection import NatsConnection
from kgents.streaming.pipeline import AckRouter
from kgents.streaming.subjects import NO_PREFIX, Namespace
from kgents.streaming.wire import WireMessage, encode_usage_event

DEFAULT_ACK_TIMEOUT = 5.0
DEFAULT_ACK_WINDOW = 256


class JetStreamUsagePublisher:
    """Publishes usage events and waits for their acks (at most ``window`` outstanding)."""

    def __init__(
        self,
        conn: NatsConnection,
        *,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        window: int = DEFAULT_ACK_WINDOW,
        ns: Namespace = NO_PREFIX,
    ) -> None:
        self._conn = conn
        self._ns = ns
        self._router = AckRouter(conn)
        self._ack_timeout = ack_timeout
        self._window = window

    async def publish_usage(self, events: Sequence[UsageEvent]) -> None:
        """Publish ``events`` and wait until every one is acknowledged.

        Raises ``EventsUnavailable`` if any is not (nothing may then be marked sent: the
        caller publishes them all again later). Invalid types raise ``InvalidInput`` before
        anything is published.
        """
        await self._publish([encode_usage_event(event, self._ns) for event in events])

    async def publish_stored(self, events: Sequence[StoredUsageEvent]) -> None:
        """``publish_usage`` for events as the outbox stores them (the relay's path)."""
        await self._publish([encode_usage_event(event, self._ns) for event in events])

    async def _publish(self, messages: list[WireMessage]) -> None:
        if not messages:
            return
        self._conn.require_connected()
        batch = await self._router.open_batch(
            window=self._window, ack_timeout=self._ack_timeout, what="usage events"
        )
        for message in messages:
            await batch.publish(message.subject, message.payload, message.headers)
        await batch.flush()
