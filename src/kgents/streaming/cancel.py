"""Cancel requests across replicas, on core NATS (not stored: a cancel is only meaningful now).

``POST /sessions/{id}/cancel`` may reach a replica that does not run the turn; it publishes on
``kgent.control.cancel.<session_id>`` and every replica's subscription hands the session id to
its supervisor, which cancels the turn if it runs there.
"""

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from kgents.clock import utc_now
from kgents.streaming.connection import (
    CLEANUP_ERRORS,
    NatsConnection,
    events_unavailable,
)
from kgents.streaming.subjects import NO_PREFIX, Namespace, cancel_subject, session_id_of

logger = logging.getLogger(__name__)

CancelCallback = Callable[[str], Awaitable[None]]


async def publish_cancel(
    conn: NatsConnection, session_id: str, *, wait_seconds: float, ns: Namespace = NO_PREFIX
) -> None:
    """Ask every replica to cancel the running turn of ``session_id``.

    Returns once the server has the request (a flush round trip, at most ``wait_seconds``).
    """
    subject = cancel_subject(session_id, ns)
    payload = json.dumps({"session_id": session_id, "time": utc_now().isoformat()}).encode()
    conn.require_connected()
    with events_unavailable("publishing a cancel request"):
        await conn.client.publish(subject, payload)
    await conn.guard(
        conn.client.flush(timeout=wait_seconds),  # type: ignore[arg-type]
        action="publishing a cancel request",
    )


class CancelSubscription:
    """A live subscription to cancel requests; ``await unsubscribe()`` to stop."""

    def __init__(self, conn: NatsConnection, sub: Subscription) -> None:
        self._conn = conn
        self._sub = sub

    async def unsubscribe(self) -> None:
        if self._conn.client.is_closed:
            return
        try:
            await self._sub.unsubscribe()
        except CLEANUP_ERRORS as exc:
            logger.debug("unsubscribing from cancel requests: %s", exc)


async def subscribe_cancels(
    conn: NatsConnection, callback: CancelCallback, *, ns: Namespace = NO_PREFIX
) -> CancelSubscription:
    """Call ``callback(session_id)`` for each cancel request; a failing callback is logged."""

    async def handle(msg: Msg) -> None:
        session_id = session_id_of(msg.subject, ns)
        if session_id is None:
            return
        try:
            await callback(session_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("cancel callback failed for session %s", session_id)

    conn.require_connected()
    with events_unavailable("subscribing to cancel requests"):
        sub = await conn.client.subscribe(ns.cancel_subjects, cb=handle)
        await conn.client.flush(timeout=conn.request_timeout)  # type: ignore[arg-type]
    return CancelSubscription(conn, sub)
