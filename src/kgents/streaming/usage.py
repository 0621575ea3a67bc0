"""Usage events to the ``kgent-usage`` stream, for the outbox relay (``UsagePublisher``).

Each event is published as CloudEvents JSON on ``kgent.usage.<type>`` with
``Nats-Msg-Id: <source>:<id>``, asynchronously; the call returns only when every event is
acknowledged. A repeat (the relay died after publishing, before marking rows sent) is absorbed
by JetStream's duplicate window and, behind it, by the meter store's unique ``(source, id)``.
"""

import asyncio
from collections.abc import Sequence

from kgents.errors import EventsUnavailable
from kgents.records import UsageEvent
from kgents.streaming.acks import AckFuture, await_acks, cancel_all
from kgents.streaming.connection import NATS_ERRORS, NatsConnection
from kgents.streaming.wire import encode_usage_event

DEFAULT_ACK_TIMEOUT = 5.0
DEFAULT_ACK_WINDOW = 256


class JetStreamUsagePublisher:
    """Publishes usage events and waits for their acks in batches of ``window``."""

    def __init__(
        self,
        conn: NatsConnection,
        *,
        ack_timeout: float = DEFAULT_ACK_TIMEOUT,
        window: int = DEFAULT_ACK_WINDOW,
    ) -> None:
        self._conn = conn
        self._ack_timeout = ack_timeout
        self._window = window

    async def publish_usage(self, events: Sequence[UsageEvent]) -> None:
        """Publish ``events`` and wait until every one is acknowledged.

        Raises ``EventsUnavailable`` if any is not (nothing may then be marked sent: the
        caller publishes them all again later). Invalid types raise ``InvalidInput``.
        """
        messages = [encode_usage_event(event) for event in events]  # validate all first
        for start in range(0, len(messages), self._window):
            self._conn.require_connected()
            futures: list[AckFuture] = []
            try:
                for message in messages[start : start + self._window]:
                    futures.append(
                        await self._conn.js.publish_async(
                            message.subject,
                            message.payload,
                            headers=message.headers,
                        )
                    )
            except NATS_ERRORS as exc:
                cancel_all(futures)
                raise EventsUnavailable(
                    f"event stream unavailable: publishing usage failed ({exc})"
                ) from exc
            except asyncio.CancelledError:
                cancel_all(futures)
                raise
            await await_acks(futures, wait_seconds=self._ack_timeout, lost=self._conn.lost)
