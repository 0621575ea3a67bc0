"""What the fake LLM servers share: the reply script, the request log and the streaming loop.

A fake is a raw ASGI app served by uvicorn in a thread (``ThreadedServer``). Subclasses only say
how their wire format spells each part of a stream, so both fakes fail in exactly the same ways.
"""

import asyncio
import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

from starlette.types import Receive, Scope, Send

from .server import ThreadedServer

Failure = Literal["none", "hang", "stall", "drop", "garbage", "error_event", "truncate"]

DEFAULT_TOKENS = ("Hello", ",", " I", " am", " the", " fake", ".")

TEXT = object()
"""Placeholder for the token text in a template given to ``sse_renderer``."""

_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
_JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(frozen=True, slots=True)
class FakeReply:
    """How a fake answers one request (any path, so ``check()`` can be made to fail too).

    ``status``: an HTTP error status (401, 429, 500, 503, ...) answered instead of a stream.
    ``failure``: ``hang`` never sends a response; after ``fail_after`` tokens, ``stall`` stops
    sending, ``drop`` closes the connection, ``garbage`` sends an event that is not JSON,
    ``error_event`` sends the provider's in-stream error event and ``truncate`` ends the body
    without the closing events.
    """

    tokens: tuple[str, ...] = DEFAULT_TOKENS
    delay_seconds: float = 0.0
    status: int = 200
    failure: Failure = "none"
    fail_after: int = 0
    include_usage: bool = True
    input_tokens: int = 21
    output_tokens: int | None = None

    @property
    def reported_output_tokens(self) -> int:
        return len(self.tokens) if self.output_tokens is None else self.output_tokens


@dataclass(slots=True)
class RecordedRequest:
    """One request the fake received; ``finished`` is set once the whole reply was sent."""

    method: str
    path: str
    headers: dict[str, str]
    json: dict[str, Any]
    number: int
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def credential(self) -> str:
        """The API key the client presented (bearer token or ``x-api-key``)."""
        authorization = self.headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            return authorization[len("bearer ") :]
        return self.headers.get("x-api-key", "")


class FakeLLMServer:
    """Base of the fakes. Use as a context manager: ``with FakeOpenAI() as fake: fake.url``.

    Set ``reply`` for every following request, or ``queue()`` replies used once each, in order.
    """

    stream_path = ""
    models_path = ""

    def __init__(self, *, model: str = "fake-model") -> None:
        self.model = model
        self.reply = FakeReply()
        self.queued: deque[FakeReply] = deque()
        self.requests: list[RecordedRequest] = []
        self.url = ""
        self._server = ThreadedServer(self)
        self._lock = threading.Lock()

    # -- scripting -------------------------------------------------------------------------

    def queue(self, *replies: FakeReply) -> None:
        """Answer the next requests with ``replies``, one each, before falling back to ``reply``."""
        self.queued.extend(replies)

    def reset(self) -> None:
        """Back to the default reply, nothing queued, nothing recorded."""
        self.reply = FakeReply()
        self.queued.clear()
        self.requests.clear()

    @property
    def base_url(self) -> str:
        """What to give the SDK as ``base_url`` (once started)."""
        return self.url

    @property
    def stream_requests(self) -> list[RecordedRequest]:
        """The generation requests received so far, oldest first."""
        return [r for r in self.requests if r.path == self.stream_path]

    # -- lifecycle -------------------------------------------------------------------------

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

    # -- wire format, spelled by subclasses --------------------------------------------------

    def opening(self, reply: FakeReply, request: RecordedRequest) -> bytes:
        raise NotImplementedError

    def token_renderer(self, request: RecordedRequest) -> Callable[[str], bytes]:
        """A function that renders one token event; built once per stream, so it is cheap."""
        raise NotImplementedError

    def closing(self, reply: FakeReply, request: RecordedRequest) -> bytes:
        raise NotImplementedError

    def error_event(self) -> bytes:
        raise NotImplementedError

    def garbage(self) -> bytes:
        raise NotImplementedError

    def error_body(self, status: int, request: RecordedRequest) -> dict[str, Any]:
        raise NotImplementedError

    def models_body(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request = await self._record(scope, receive)
        with self._lock:
            reply = self.queued.popleft() if self.queued else self.reply
        if reply.failure == "hang":
            await _until_disconnect(receive)
        elif reply.status >= 400:
            await _send_json(send, reply.status, self.error_body(reply.status, request))
        elif request.method == "GET" and request.path == self.models_path:
            await _send_json(send, 200, self.models_body())
        elif request.method == "POST" and request.path == self.stream_path:
            await self._stream(reply, request, receive, send)
        else:
            await _send_json(send, 404, self.error_body(404, request))
        if request.path != self.stream_path:
            request.finished.set()

    async def _record(self, scope: Scope, receive: Receive) -> RecordedRequest:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        with self._lock:
            request = RecordedRequest(
                method=scope["method"],
                path=scope["path"],
                headers=headers,
                json=json.loads(raw) if raw else {},
                number=len(self.requests) + 1,
            )
            self.requests.append(request)
        return request

    async def _stream(
        self, reply: FakeReply, request: RecordedRequest, receive: Receive, send: Send
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        await _send_part(send, self.opening(reply, request))
        render = self.token_renderer(request)
        failing = reply.failure != "none"
        loop = asyncio.get_running_loop()
        started = loop.time()
        for sent, text in enumerate(reply.tokens):
            if failing and sent == reply.fail_after:
                break
            if sent and reply.delay_seconds:
                # Sleep to an absolute schedule, so the per-token overhead does not add up.
                await asyncio.sleep(max(0.0, started + sent * reply.delay_seconds - loop.time()))
            await send({"type": "http.response.body", "body": render(text), "more_body": True})
        if not failing:
            await _send_part(send, self.closing(reply, request), last=True)
            request.finished.set()
        elif reply.failure == "stall":
            await _until_disconnect(receive)
        elif reply.failure == "garbage":
            await _send_part(send, self.garbage(), last=True)
        elif reply.failure == "error_event":
            await _send_part(send, self.error_event(), last=True)
        elif reply.failure == "truncate":
            await _send_part(send, b"", last=True)
        # "drop": return with the body unfinished, so uvicorn closes the connection.


def sse(data: object, *, event: str | None = None) -> bytes:
    """One server-sent event with a JSON ``data`` line (and an ``event`` line when named)."""
    line = f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
    return (f"event: {event}\n{line}" if event else line).encode()


def sse_renderer(template: object, *, event: str | None = None) -> Callable[[str], bytes]:
    """Render ``template`` once with a placeholder for the text, then only splice in each text.

    Encoding a whole event per token costs more than everything else the fake does per token.
    """
    marker = "\x00TEXT\x00"
    before, after = sse(_replace(template, marker), event=event).split(json.dumps(marker).encode())

    def render(text: str) -> bytes:
        return before + json.dumps(text).encode() + after

    return render


def _replace(template: object, marker: str) -> object:
    if template is TEXT:
        return marker
    if isinstance(template, dict):
        return {key: _replace(value, marker) for key, value in template.items()}
    if isinstance(template, list):
        return [_replace(value, marker) for value in template]
    return template


async def _send_part(send: Send, body: bytes, *, last: bool = False) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": not last})


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _JSON_HEADERS})
    await _send_part(send, json.dumps(payload).encode(), last=True)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
