"""Refuse request bodies over the limit with 413, whether declared or streamed (chunked).

A declared ``Content-Length`` is checked before anything is read. A body without one is read
first, up to the limit (so at most ``max_bytes`` are held), and replayed to the application.

The 413 is the error body of the path, as ``kgents.api.errors`` answers every other error:
``{"error": {...}}``, or problem details (``application/problem+json``) under ``/api/v1``.
"""

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kgents.api.problems import PROBLEM_CONTENT_TYPE, problem_body, wants_problem

_CODE = "payload_too_large"


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None:
            if declared < 0 or declared > self.max_bytes:
                await self._reject(scope, send)
                return
            await self.app(scope, receive, send)
            return
        if not _may_have_body(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(scope, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        message = f"request body is larger than {self.max_bytes} bytes"
        document: dict[str, Any]
        if wants_problem(scope.get("path", "")):
            document = problem_body(413, detail=message, code=_CODE)
            content_type = PROBLEM_CONTENT_TYPE
        else:
            document = {"error": {"code": _CODE, "message": message}}
            content_type = "application/json"
        body = json.dumps(document).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


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
