"""Reading a provider's server-sent event stream raw (both providers do): the body opened chunk
by chunk, the ``data:`` of each event split from it, and the exception for an error event."""

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx2


@contextlib.asynccontextmanager
async def open_body(
    response: Awaitable[httpx2.Response], failed: Callable[[Exception], Exception]
) -> AsyncIterator[AsyncIterator[bytes]]:
    """The body of ``response`` (a request being sent), chunk by chunk; the body and the
    response are closed on exit. A failure to send it is raised as ``failed(exc)``."""
    try:
        opened = await response
    except Exception as exc:
        raise failed(exc) from exc
    try:
        async with contextlib.aclosing(opened.aiter_bytes()) as chunks:
            yield chunks
    finally:
        await opened.aclose()


class ErrorEvent(Exception):
    """An error event inside a stream whose HTTP status was already 200.

    ``body`` is the event's error body (``{...}`` or ``{"error": {...}}``). Raised while reading,
    turned into a ``ProviderError`` (``errors.from_error_event``) that keeps this as its cause.
    """

    def __init__(self, body: object) -> None:
        super().__init__("error event in the stream")
        self.body = body


class SSEData:
    """Splits a server-sent event stream, fed in chunks of bytes, into the data of each event.

    Lines end with LF, CRLF or CR. The ``data:`` lines of one event are joined with LF; other
    fields (``event:`` too) and comments are ignored; an event ends at a blank line (an unfinished
    one at the end of the body is dropped, and so is an event without data, as the SSE
    specification says).
    """

    __slots__ = ("_data", "_rest", "_skip_lf")

    def __init__(self) -> None:
        self._rest = b""
        self._data: list[bytes] = []
        self._skip_lf = False

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of every event that ``chunk`` completes, in order."""
        if not chunk:
            return []
        if self._skip_lf and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF whose CR ended the previous chunk
        buffer = self._rest + chunk if self._rest else chunk
        self._skip_lf = False
        if b"\r" in buffer:
            self._skip_lf = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._rest = lines.pop()
        events: list[bytes] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line.startswith(b"data: ") else line[5:])
        return events
