"""One NATS connection: reconnects forever, knows whether it is up, never hangs a caller.

Callers check ``require_connected()`` before publishing so that while NATS is down a new turn is
refused at once with ``EventsUnavailable`` instead of waiting for a timeout; every request
below has a timeout as well. Driver errors become ``EventsUnavailable`` (``raise ... from``).
"""

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from kgents.errors import EventsUnavailable, InvalidInput
from kgents.redaction import mask_url_credentials
from kgents.streaming.nats_auth import NO_AUTH, NatsAuth, split_credentials

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_REQUEST_TIMEOUT = 5.0
RECONNECT_TIME_WAIT = 0.25
PUBLISH_ASYNC_MAX_PENDING = 4000
BACKGROUND_CLOSE_TIMEOUT = 2.0

NATS_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.Error,
    asyncio.TimeoutError,
    OSError,
)
"""Exceptions of the driver (and its transport) that mean "the event stream is unavailable"."""

CLEANUP_ERRORS: tuple[type[BaseException], ...] = (*NATS_ERRORS, RuntimeError)
"""What a best-effort clean-up (unsubscribe, close) may raise and log instead."""


def parse_servers(value: str | Sequence[str]) -> list[str]:
    """``KGENTS_NATS_URL`` as a list: one URL or a comma-separated list of cluster members."""
    items = value.split(",") if isinstance(value, str) else list(value)
    servers = [item.strip() for item in items if item.strip()]
    if not servers:
        raise InvalidInput("no NATS server URL given", code="invalid_nats_url")
    for server in servers:
        if any(ch.isspace() for ch in server):
            shown = mask_url_credentials(server)
            raise InvalidInput(f"invalid NATS server URL {shown!r}", code="invalid_nats_url")
    return servers


@contextlib.contextmanager
def events_unavailable(action: str) -> Iterator[None]:
    """Translate driver errors raised inside the block into ``EventsUnavailable``."""
    try:
        yield
    except NATS_ERRORS as exc:
        raise failed(action, exc) from exc


def failed(action: str, exc: BaseException) -> EventsUnavailable:
    """The ``EventsUnavailable`` that a driver error ``exc`` raised while doing ``action`` is
    (raise it ``from exc``)."""
    return EventsUnavailable(f"event stream unavailable: {action} failed ({_describe(exc)})")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class NatsConnection:
    """A connected NATS client with its JetStream context and connection state.

    Build it with ``await NatsConnection.connect(url, auth=...)``; close it with ``await close()``.
    """

    def __init__(self, *, request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        self.request_timeout = request_timeout
        self._nc = Client()
        self._js: JetStreamContext | None = None
        self._reconnects = 0
        self._background: set[asyncio.Task[Any]] = set()
        self._reconnected = asyncio.Event()
        # Resolved by a disconnect; a fresh one is armed at each reconnect.
        self._lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._closing = False
        self._last_error: Exception | None = None

    @classmethod
    async def connect(
        cls,
        servers: str | Sequence[str],
        *,
        auth: NatsAuth = NO_AUTH,
        name: str = "kgents",
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        reconnect_time_wait: float = RECONNECT_TIME_WAIT,
    ) -> "NatsConnection":
        """Connect to the first reachable server, then reconnect forever after any loss.

        Raises ``EventsUnavailable`` if no server accepts a connection within
        ``connect_timeout`` seconds. Credentials in the URLs join ``auth`` and leave the URLs,
        so the URLs the client reports (and logs) never carry them.
        """
        urls, auth = split_credentials(parse_servers(servers), auth)
        conn = cls(request_timeout=request_timeout)
        attempt_timeout = max(0.1, min(2.0, connect_timeout))
        try:
            await asyncio.wait_for(
                conn._nc.connect(
                    servers=urls,
                    name=name,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=reconnect_time_wait,  # type: ignore[arg-type]
                    connect_timeout=attempt_timeout,  # type: ignore[arg-type]
                    ping_interval=10,
                    max_outstanding_pings=3,
                    error_cb=conn._on_error,
                    disconnected_cb=conn._on_disconnected,
                    reconnected_cb=conn._on_reconnected,
                    closed_cb=conn._on_closed,
                    **auth.connect_options(),
                ),
                timeout=connect_timeout,
            )
        except asyncio.CancelledError:
            await conn._abandon()
            raise
        except NATS_ERRORS as exc:
            await conn._abandon()
            servers_text = ", ".join(urls)
            # Attempts that failed (a refused password) end in a timeout: report why they failed.
            reason = _describe(conn._last_error or exc)
            raise EventsUnavailable(f"cannot connect to NATS at {servers_text} ({reason})") from exc
        conn._js = conn._nc.jetstream(
            timeout=request_timeout, publish_async_max_pending=PUBLISH_ASYNC_MAX_PENDING
        )
        return conn

    @property
    def client(self) -> Client:
        """The nats-py client (for adapters in this package)."""
        return self._nc

    @property
    def js(self) -> JetStreamContext:
        """The JetStream context shared by every publisher on this connection."""
        if self._js is None:
            raise EventsUnavailable("event stream unavailable: not connected")
        return self._js

    @property
    def is_connected(self) -> bool:
        """True while the client holds a live connection to a server."""
        return bool(self._nc.is_connected)

    @property
    def reconnects(self) -> int:
        """How many times the connection was re-established since ``connect``."""
        return self._reconnects

    @property
    def connected_url(self) -> str | None:
        url = self._nc.connected_url
        return url.geturl() if url is not None else None

    def require_connected(self) -> None:
        """Raise ``EventsUnavailable`` now if the connection is down (no waiting)."""
        if not self._nc.is_connected:
            raise EventsUnavailable("event stream unavailable: NATS is disconnected")

    @property
    def lost(self) -> "asyncio.Future[None]":
        """Resolved as soon as the current connection drops (a fresh one is armed on reconnect).

        Waits for replies race against it: a reply to a request sent on a dropped connection
        never comes, so there is no point waiting out its timeout.
        """
        return self._lost

    async def guard(self, operation: Awaitable[T], *, action: str) -> T:
        """Await a request; ``EventsUnavailable`` as soon as the connection drops, on a driver
        error, or when the request times out.

        The request runs in the caller's task, under a timeout scope with no deadline that the
        connection's loss expires at once: no task of its own and no ``asyncio.wait`` per call
        (every chunk of a reply passes through here).
        """
        self.require_connected()
        lost = self._lost
        try:
            async with asyncio.timeout(None) as scope:
                loop = asyncio.get_running_loop()

                def expire(_: object) -> None:
                    scope.reschedule(loop.time())

                lost.add_done_callback(expire)
                try:
                    with events_unavailable(action):
                        return await operation
                finally:
                    lost.remove_done_callback(expire)
        except TimeoutError:
            if not scope.expired():
                raise
        raise EventsUnavailable(f"event stream unavailable: connection lost while {action}")

    async def wait_reconnected(self, wait_seconds: float) -> bool:
        """Wait until the next reconnect (at most ``wait_seconds``); True if one happened."""
        event = self._reconnected
        try:
            await asyncio.wait_for(event.wait(), timeout=wait_seconds)
        except TimeoutError:
            return False
        return True

    def run_detached(self, coro: Coroutine[Any, Any, None]) -> "asyncio.Task[None]":
        """Run a short clean-up task that must finish even if its caller is cancelled.

        ``close()`` waits for such tasks (bounded) before closing the connection.
        """
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def close(self) -> None:
        """Finish pending clean-ups (bounded), flush and close the connection."""
        self._closing = True
        if self._background:
            await asyncio.wait(set(self._background), timeout=BACKGROUND_CLOSE_TIMEOUT)
            for task in list(self._background):
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
        await self._abandon()

    async def _abandon(self) -> None:
        if self._nc.is_closed:
            return
        try:
            await asyncio.wait_for(self._nc.close(), timeout=BACKGROUND_CLOSE_TIMEOUT)
        except CLEANUP_ERRORS as exc:
            logger.debug("closing the NATS connection: %s", _describe(exc))

    async def _on_error(self, exc: Exception) -> None:
        # The server's own refusal (an authorization violation) says more than the reset of
        # the socket it closes next: a transport error never replaces it.
        if not (isinstance(exc, OSError) and isinstance(self._last_error, nats.errors.Error)):
            self._last_error = exc
        if isinstance(exc, nats.errors.SlowConsumerError):
            logger.debug("nats: slow consumer on %s (gap is recovered)", exc.subject)
            return
        logger.warning("nats: %s", _describe(exc))

    async def _on_disconnected(self) -> None:
        if not self._lost.done():
            self._lost.set_result(None)
        if not self._closing:
            logger.warning("nats: disconnected")

    async def _on_reconnected(self) -> None:
        self._reconnects += 1
        logger.info("nats: reconnected to %s", self.connected_url)
        # Wake everyone waiting for this reconnect, and arm a fresh event for the next one.
        event, self._reconnected = self._reconnected, asyncio.Event()
        if self._lost.done():
            self._lost = asyncio.get_running_loop().create_future()
        event.set()

    async def _on_closed(self) -> None:
        logger.info("nats: connection closed")
