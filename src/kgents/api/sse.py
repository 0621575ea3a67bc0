"""Server-Sent Events: pure framing, and a response that follows a session's events.

The response is one follower of the session's subject in JetStream. Each frame carries
``id: <stream sequence>``, so a client that drops resumes with ``Last-Event-ID``. A comment
heartbeat keeps idle connections open through proxies.
"""

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from kgents.api.errors import public_message
from kgents.errors import AccessLapsed, EventsUnavailable, KgentsError
from kgents.sessions.ports import FollowedEvent, Follower, SessionEvent
from kgents.tenancy.streams import StreamSlot

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 15.0
END_GRACE_SECONDS = 3.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}


# The line breaks of str.splitlines() that JSON leaves raw (it escapes those below U+0020),
# U+0085, U+2028 and U+2029, in UTF-8: escaped too, so a client splitting lines naively never
# reads a line forged inside a string. (Each sequence starts with a lead byte: in valid UTF-8
# it is that character and nothing else.)
_RAW_LINE_BREAKS = re.compile(b"\xc2\x85|\xe2\x80[\xa8\xa9]")


def _escape_line_break(match: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % ord(match.group().decode())


def sse_frame(*, event_id: int | None, event: str, data: dict[str, Any]) -> bytes:
    """One SSE frame whose ``data`` is a single line, for every line splitter: JSON escapes
    newlines and other control characters, and U+0085, U+2028 and U+2029 are escaped here.
    Other text goes as UTF-8, unescaped."""
    body = orjson.dumps(data)
    if b"\xc2\x85" in body or b"\xe2\x80" in body:
        body = _RAW_LINE_BREAKS.sub(_escape_line_break, body)
    if event_id is None:
        return b"event: %s\ndata: %s\n\n" % (event.encode(), body)
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event_id, event.encode(), body)


def error_body_of(error: KgentsError) -> dict[str, dict[str, str]]:
    return {"error": {"code": error.code, "message": public_message(error)}}


def sse_comment(text: str) -> bytes:
    return f": {text}\n\n".encode()


async def sse_frames(
    follower: Follower,
    *,
    request: Request,
    first_seq: int = 0,
    stop_when: Callable[[SessionEvent], bool] | None = None,
    turn_end: "asyncio.Future[SessionEvent | None] | None" = None,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
) -> AsyncGenerator[bytes, None]:
    """Frames for ``follower``'s events until ``stop_when`` says so or the client goes away.

    One loop reads every event already received at once (``next_batch``) and writes their
    frames as one chunk, so a client that fell behind catches up in few writes; when nothing
    comes for ``heartbeat_seconds`` it writes a heartbeat comment, and the client's disconnect
    is noticed then or at the next write, and the follower is then closed.
    Events below ``first_seq`` are skipped: a follower opened before the turn's first event
    was published may hold older ones (a previous turn's late end event).
    ``turn_end`` resolves when the turn being streamed ended: with its end event when that
    could not be published (NATS went away), which is then sent from there, without id, if the
    stream does not deliver it within ``END_GRACE_SECONDS``; with ``None`` when the stream holds
    it (the follower delivers it).
    """
    loop = asyncio.get_running_loop()
    last_event_at = last_write_at = loop.time()
    ended_at: float | None = None

    def turn_ended(_: "asyncio.Future[SessionEvent | None]") -> None:
        follower.wake()  # the grace timer starts now

    if turn_end is not None:
        turn_end.add_done_callback(turn_ended)
    try:
        yield sse_comment("connected")
        fallback = turn_end  # ``None`` once the end is known to be in the stream
        while True:
            if fallback is not None and fallback.done() and fallback.result() is None:
                fallback = None
            wait = max(0.0, last_write_at + heartbeat_seconds - loop.time())
            if fallback is not None and fallback.done():
                ended_at = ended_at or loop.time()
                # The grace runs from the later of the turn's end and the last event
                # delivered: while events flow, the stream is catching up, not stuck.
                deadline = max(ended_at, last_event_at) + END_GRACE_SECONDS
                wait = min(wait, max(0.0, deadline - loop.time()))
            try:
                batch = await follower.next_batch(wait)
            except StopAsyncIteration:
                return
            except (EventsUnavailable, AccessLapsed) as exc:
                # Headers are sent: say why the stream ends (the client resumes later, or its
                # key no longer holds).
                logger.info("a follower's stream ended: %s", exc.message)
                yield sse_frame(
                    event_id=None, event="error", data={"error": error_body_of(exc)["error"]}
                )
                return
            now = loop.time()
            if batch and batch[0].seq < first_seq:
                batch = [followed for followed in batch if followed.seq >= first_seq]
                if not batch:
                    continue
            if batch:
                last_event_at = last_write_at = now
                frames = []
                for followed in batch:
                    frames.append(event_frame(followed))
                    if stop_when is not None and stop_when(followed.event):
                        yield b"".join(frames)
                        return
                yield frames[0] if len(frames) == 1 else b"".join(frames)
                continue
            if fallback is not None and fallback.done():
                ended_at = ended_at or now
                end = fallback.result()
                if end is not None and now >= max(ended_at, last_event_at) + END_GRACE_SECONDS:
                    # The stream cannot deliver the end (NATS is gone): send it from here.
                    yield sse_frame(event_id=None, event=end.type, data=end.data)
                    return
                continue
            if now < last_write_at + heartbeat_seconds:
                continue  # woken up early (the turn ended): look again
            if await request.is_disconnected():
                return
            yield sse_comment("heartbeat")
            last_write_at = loop.time()
    finally:
        if turn_end is not None:
            turn_end.remove_done_callback(turn_ended)
        await follower.aclose()


def event_frame(followed: FollowedEvent) -> bytes:
    """The frame of a followed event, made once per process when the event object is shared
    by several followers (it then carries a ``memo``)."""
    memo: dict[str, bytes] | None = getattr(followed, "memo", None)
    if memo is not None:
        frame = memo.get("sse")
        if frame is None:
            event = followed.event
            frame = memo["sse"] = sse_frame(
                event_id=followed.seq, event=event.type, data=event.data
            )
        return frame
    event = followed.event
    return sse_frame(event_id=followed.seq, event=event.type, data=event.data)


class FollowerResponse(StreamingResponse):
    """An SSE response that, however it ends, closes its frames and their follower and gives
    back its stream slot: also when the client left before the body started (the frames'
    generator then never ran, so its own clean-up would not). A client that goes away is a
    disconnect, logged as one."""

    def __init__(
        self, frames: AsyncGenerator[bytes, None], follower: Follower, slot: StreamSlot | None
    ) -> None:
        super().__init__(frames, media_type="text/event-stream", headers=SSE_HEADERS)
        self._frames = frames
        self._follower = follower
        self._slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (ClientDisconnect, OSError):
            logger.info("client disconnected from %s", scope.get("path", "?"))
        finally:
            if self._slot is not None:
                self._slot.release()
            try:
                await self._frames.aclose()
            finally:
                await self._follower.aclose()


def sse_response(
    follower: Follower, frames: AsyncGenerator[bytes, None], *, slot: StreamSlot | None = None
) -> StreamingResponse:
    """The SSE response of ``frames``, which read ``follower``: the follower is closed and
    ``slot`` given back when the response ends."""
    return FollowerResponse(frames, follower, slot)
