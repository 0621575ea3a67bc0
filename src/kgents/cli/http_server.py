"""How ``kgents serve`` runs uvicorn: limits on what one connection may hold.

- A request head (request line and headers) is at most ``KGENTS_MAX_HEADER_BYTES``; a larger
  one is refused with 400 (h11 counts the bytes, so thousands of tiny headers are refused too).
- A connection has ``KGENTS_REQUEST_HEAD_TIMEOUT_SECONDS`` to send each request head, from
  connecting or from the end of the previous response (idle keep-alive connections are closed
  after as long); a slower client gets 408 and is disconnected. The body's own deadline is in
  ``kgents.api.body_limit``.
- A WebSocket message is at most ``KGENTS_MAX_BODY_BYTES`` (uvicorn closes with 1009 above).
- At most ``KGENTS_MAX_CONNECTIONS`` connections (and requests) at once per process; uvicorn
  answers 503 beyond.

uvicorn's h11 protocol is used (not httptools): its head-size limit is the one uvicorn offers.
"""

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from kgents.config import Settings

_TIMEOUT_BODY = b"request head not received in time\n"
_REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on every request head (uvicorn's keep-alive
    timeout, ``timeout_keep_alive``, which otherwise only runs between requests)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._stop_head_timer()  # the head is in (or the connection is over)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._start_head_timer()  # the next request's head, on a kept-alive connection

    def _start_head_timer(self) -> None:
        self._stop_head_timer()
        self._head_timer = self.loop.call_later(self.timeout_keep_alive, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.conn.our_state is h11.IDLE:
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def uvicorn_limits(settings: Settings) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.run`` that set the limits above."""
    return {
        "http": HeadTimeoutProtocol,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": settings.request_head_timeout_seconds,
        "limit_concurrency": settings.max_connections,
        "ws_max_size": settings.max_body_bytes,  # a WebSocket frame is held to a body's limit
    }
