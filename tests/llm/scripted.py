"""A server that answers ``POST /v1/chat/completions`` with a scripted raw body, byte for byte.

The fakes in ``tests.fakes`` speak a well-formed wire format; the wire tests of the openai
provider also need the odd but legal spellings of server-sent events (CRLF, bare CR, events cut
anywhere, multi-line data) and servers that misbehave in ways the fakes do not script.
"""

import asyncio
import threading
from collections import deque
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from starlette.types import Receive, Scope, Send

from tests.fakes import ThreadedServer

_SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8")]


@dataclass(frozen=True, slots=True)
class Script:
    """One response: ``parts`` sent one ``send`` each, ``pause_seconds`` apart.

    With ``hold_open`` the body is not ended after the last part: the server waits for the
    client to go away, as a server that sends ``[DONE]`` but keeps the response open would.
    """

    parts: tuple[bytes, ...]
    pause_seconds: float = 0.0
    hold_open: bool = False


@dataclass
class ScriptedServer:
    """``with ScriptedServer() as server``: serves ``server.queue(...)`` scripts, one a request."""

    scripts: deque[Script] = field(default_factory=deque)
    clients: list[tuple[str, int]] = field(default_factory=list)
    """The client address (host, port) of each request, in order: one port, one connection."""
    url: str = ""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server = ThreadedServer(self)

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def queue(self, *scripts: Script) -> None:
        with self._lock:
            self.scripts.extend(scripts)

    def __enter__(self) -> Self:
        self.url = self._server.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.stop()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body", False):
            pass
        with self._lock:
            self.clients.append(tuple(scope["client"]))
            script = self.scripts.popleft()
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        for index, part in enumerate(script.parts):
            if index and script.pause_seconds:
                await asyncio.sleep(script.pause_seconds)
            await send({"type": "http.response.body", "body": part, "more_body": True})
        if script.hold_open:
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})
