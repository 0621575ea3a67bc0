"""Refuse request heads over the limit with 431, request bodies over the limit with 413, and
bodies too slow to arrive with 408.

The server refuses a head over the limit that arrives in pieces (``kgents.cli.http_server``);
one that arrived whole is measured here: request line and headers. A declared
``Content-Length`` is checked before anything is read. Every body is then read here first, up
to the limit (so at most ``max_bytes`` are held) and within ``timeout_seconds`` (a client
sending it slower is cut off), and replayed to the application.

The 431, 413 and 408 are the error body of the path, as ``kgents.api.errors`` answers every
other error: ``{"error": {...}}``, or problem details (``application/problem+json``) under
``/api/v1``. Each closes the connection.
"""

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kgents.api.problems import PROBLEM_CONTENT_TYPE, problem_body, wants_problem


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, *, max_bytes: int, timeout_seconds: float, max_head_bytes: int
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_seconds = timeout_seconds
        self.max_head_bytes = max_head_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _head_size(scope) > self.max_head_bytes:
            message = f"request line and headers are larger than {self.max_head_bytes} bytes"
            await _reject(scope, send, 431, "request_header_too_large", message)
            return
        declared = _content_length(scope)
        if declared is not None and (declared < 0 or declared > self.max_bytes):
            await self._reject_too_large(scope, send)
            return
        if not declared and not _may_have_body(scope):
            await self.app(scope, receive, send)
            return
        try:
            async with asyncio.timeout(self.timeout_seconds):
                first = await self._read(receive)
        except TimeoutError:
            message = f"the request body did not arrive within {self.timeout_seconds:g} seconds"
            await _reject(scope, send, 408, "request_timeout", message)
            return
        if first is None:
            await self._reject_too_large(scope, send)
            return
        await self.app(scope, _replay([first], receive), send)

    async def _read(self, receive: Receive) -> Message | None:
        """The whole body as one message (or the disconnect that cut it); ``None`` when it
        is over the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return message
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

    async def _reject_too_large(self, scope: Scope, send: Send) -> None:
        message = f"request body is larger than {self.max_bytes} bytes"
        await _reject(scope, send, 413, "payload_too_large", message)


async def _reject(scope: Scope, send: Send, status: int, code: str, message: str) -> None:
    document: dict[str, Any]
    if wants_problem(scope.get("path", "")):
        document = problem_body(status, detail=message, code=code)
        content_type = PROBLEM_CONTENT_TYPE
    else:
        document = {"error": {"code": code, "message": message}}
        content_type = "application/json"
    body = json.dumps(document).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _head_size(scope: Scope) -> int:
    """The request line and headers' size as sent (give or take the separators)."""
    line = len(scope.get("method", "")) + len(scope.get("raw_path", b"")) + 12
    line += len(scope.get("query_string", b""))
    return line + sum(len(name) + len(value) + 4 for name, value in scope.get("headers", ()))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


def _may_have_body(scope: Scope) -> bool:
    return any(name == b"transfer-encoding" for name, _ in scope.get("headers", ()))


def _replay(messages: list[Message], receive: Receive) -> Receive:
    queue = list(messages)

    async def replayed() -> Message:
        if queue:
            return queue.pop(0)
        return await receive()

    return replayed
