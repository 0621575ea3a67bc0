"""Server-Sent Events: pure framing, and a response that follows a session's events.

The response is one follower of the session's subject in JetStream. Each frame carries
``id: <stream sequence>``, so a client that drops resumes with ``Last-Event-ID``. A comment
heartbeat keeps idle connections open through proxies.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from kgents.sessions.ports import SessionEvent

HEARTBEAT_SECONDS = 15.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def sse_frame(*, event_id: int | None, event: str, data: dict[str, Any]) -> bytes:
    """One SSE frame. JSON never contains a raw newline, so ``data`` is a single line."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n\n").encode()


def sse_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


async def sse_frames(
    events: AsyncIterator[tuple[int, SessionEvent]],
    *,
    request: Request,
    stop_when: Callable[[SessionEvent], bool] | None = None,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
) -> AsyncIterator[bytes]:
    """Frames for ``events`` until ``stop_when`` says so or the client goes away.

    Waiting for the next event is raced against a heartbeat timer; the client's disconnect is
    noticed at the next heartbeat or write at the latest, and the follower is then closed.
    """
    iterator = events.__aiter__()
    pending: asyncio.Task[tuple[int, SessionEvent]] | None = None
    try:
        yield sse_comment("connected")
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=heartbeat_seconds)
            if not done:
                if await request.is_disconnected():
                    return
                yield sse_comment("heartbeat")
                continue
            try:
                seq, event = pending.result()
            except StopAsyncIteration:
                return
            finally:
                pending = None
            yield sse_frame(event_id=seq, event=event.type, data=event.data)
            if stop_when is not None and stop_when(event):
                return
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def sse_response(frames: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)
