"""One JetStream publish that rides out a leader election or a reconnect.

While a cluster elects a stream leader, or the client reconnects to another server, a publish
meets a dropped connection, "no responders" (503) or no ack in time. The same message (same
body, same ``Nats-Msg-Id``) is then sent again until it is acknowledged or ``failover_seconds``
have passed; if an earlier copy did reach the stream, JetStream drops the new one as a duplicate
and acknowledges it with the first copy's sequence. Only a refusal that no retry can change (a
4xx from the stream) or a closed connection ends it early.
"""

import asyncio
import logging

import nats.errors
import nats.js.errors

from kgents.errors import EventsUnavailable
from kgents.streaming.connection import NATS_ERRORS
from kgents.streaming.pipeline import AckRouter
from kgents.streaming.wire import WireMessage

logger = logging.getLogger(__name__)

RECONNECT_GRACE_SECONDS = 2.0
"""How long a new follower waits for a reconnect (a client moving to another server of the
cluster takes well under a second) before it is refused."""
RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 1.0
_SERVER_ERRORS = 500


def retriable(exc: BaseException | None) -> bool:
    """Whether a failed publish may succeed if sent again (``None``: the connection dropped)."""
    if exc is None:
        return True
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return False  # closed for good (shutting down): nothing will come back
    if isinstance(exc, nats.js.errors.APIError):
        # 5xx: the server cannot answer now (no leader, shutting down); 4xx: it never will.
        return exc.code is None or exc.code >= _SERVER_ERRORS
    return isinstance(exc, NATS_ERRORS)


async def publish_with_failover(
    router: AckRouter,
    message: WireMessage,
    *,
    ack_timeout: float,
    failover_seconds: float,
) -> int:
    """Publish ``message`` and return its stream sequence, retrying as the module says.

    The ack comes through ``router`` (one subscription per connection, no request token per
    message). Raises ``EventsUnavailable`` once ``failover_seconds`` have passed without an
    ack, or at once when the stream refuses the message for good."""
    conn = router.connection
    loop = asyncio.get_running_loop()
    deadline = loop.time() + failover_seconds
    delay = RETRY_FIRST_SECONDS
    attempts = 0
    while True:
        attempts += 1
        try:
            seq = await _publish_once(router, message, ack_timeout, deadline - loop.time())
        except EventsUnavailable as exc:
            if not retriable(exc.__cause__) or loop.time() + delay >= deadline:
                if attempts > 1:
                    logger.warning(
                        "gave up publishing on %s after %d tries", message.subject, attempts
                    )
                raise
            if not conn.is_connected:
                await conn.wait_reconnected(min(deadline - loop.time(), RETRY_MAX_SECONDS))
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)
            continue
        if attempts > 1:
            logger.info("published on %s after %d tries", message.subject, attempts)
        return seq


async def _publish_once(
    router: AckRouter, message: WireMessage, ack_timeout: float, remaining: float
) -> int:
    conn = router.connection
    if conn.client.is_closed:
        raise EventsUnavailable(
            "event stream unavailable: the NATS connection is closed"
        ) from nats.errors.ConnectionClosedError()
    conn.require_connected()
    return await router.request(
        message.subject,
        message.payload,
        message.headers,
        ack_timeout=max(0.05, min(ack_timeout, remaining)),
    )
