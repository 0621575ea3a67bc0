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

from kgents.errors import EventsUnavailable, KgentsError
from kgents.sessions.ports import FollowedEvent, Follower, SessionEvent

HEARTBEAT_SECONDS = 15.0
END_GRACE_SECONDS = 3.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


def sse_frame(*, event_id: int | None, event: str, data: dict[str, Any]) -> bytes:
    """One SSE frame. JSON never contains a raw newline, so ``data`` is a single line."""
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False))
    return ("\n".join(lines) + "\n\n").encode()


def error_body_of(error: KgentsError) -> dict[str, dict[str, str]]:
    return {"error": {"code": error.code, "message": error.message}}


def sse_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


async def sse_frames(
    follower: Follower,
    *,
    request: Request,
    stop_when: Callable[[SessionEvent], bool] | None = None,
    turn_end: "asyncio.Future[SessionEvent] | None" = None,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
) -> AsyncIterator[bytes]:
    """Frames for ``follower``'s events until ``stop_when`` says so or the client goes away.

    Waiting for the next event is raced against a heartbeat timer; the client's disconnect is
    noticed at the next heartbeat or write at the latest, and the follower is then closed.
    ``turn_end`` resolves with the end event of the turn being streamed: if the stream cannot
    deliver it (NATS went away) within ``END_GRACE_SECONDS``, it is sent from there, without id.
    """
    iterator = follower.__aiter__()
    pending: asyncio.Task[FollowedEvent] | None = None
    loop = asyncio.get_running_loop()
    last_event_at = loop.time()
    ended_at: float | None = None
    try:
        yield sse_comment("connected")
        while True:
            if pending is None:
                pending = asyncio.ensure_future(_next(iterator))
            waiting: set[asyncio.Future[Any]] = {pending}
            timeout = heartbeat_seconds
            if turn_end is not None:
                if not turn_end.done():
                    waiting.add(turn_end)
                else:
                    ended_at = ended_at or loop.time()
                    # The grace runs from the later of the turn's end and the last event
                    # delivered: while events flow, the stream is catching up, not stuck.
                    deadline = max(ended_at, last_event_at) + END_GRACE_SECONDS
                    timeout = min(timeout, max(0.0, deadline - loop.time()))
            done, _ = await asyncio.wait(
                waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if pending not in done:
                if turn_end is not None and turn_end in done:
                    continue
                if ended_at is not None and turn_end is not None:
                    if loop.time() >= max(ended_at, last_event_at) + END_GRACE_SECONDS:
                        # The stream cannot deliver the end (NATS is gone): send it from here.
                        end = turn_end.result()
                        yield sse_frame(event_id=None, event=end.type, data=end.data)
                        return
                    continue
                if await request.is_disconnected():
                    return
                yield sse_comment("heartbeat")
                continue
            try:
                followed = pending.result()
            except StopAsyncIteration:
                return
            except EventsUnavailable as exc:
                # Headers are sent: say why the stream ends; the client resumes later.
                yield sse_frame(
                    event_id=None, event="error", data={"error": error_body_of(exc)["error"]}
                )
                return
            finally:
                pending = None
            last_event_at = loop.time()
            event = followed.event
            yield sse_frame(event_id=followed.seq, event=event.type, data=event.data)
            if stop_when is not None and stop_when(event):
                return
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        await follower.aclose()


async def _next(iterator: AsyncIterator[FollowedEvent]) -> FollowedEvent:
    return await iterator.__anext__()


def sse_response(frames: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)
