"""``sse_frames`` on its own: events received together leave as one write, in order, with their
ids; heartbeats while idle; the end of the turn stops the stream."""

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import pytest
from starlette.requests import Request

from kgents.api.sse import event_frame, sse_frames
from kgents.sessions.ports import SessionEvent
from kgents.streaming.wire import ReceivedEvent

pytestmark = pytest.mark.anyio


@dataclass
class ScriptedFollower:
    """A follower handing out prepared batches, then waiting (``wake`` ends a wait)."""

    batches: list[list[ReceivedEvent]]
    closed: bool = False
    waits: list[float | None] = field(default_factory=list)
    _woken: asyncio.Event = field(default_factory=asyncio.Event)

    def __aiter__(self) -> AsyncIterator[ReceivedEvent]:
        raise NotImplementedError

    async def next_batch(self, wait_seconds: float | None = None) -> Sequence[ReceivedEvent]:
        self.waits.append(wait_seconds)
        if self.batches:
            return self.batches.pop(0)
        self._woken.clear()
        try:
            async with asyncio.timeout(wait_seconds):
                await self._woken.wait()
        except TimeoutError:
            pass
        return []

    def wake(self) -> None:
        self._woken.set()

    async def aclose(self) -> None:
        self.closed = True


def chunk(seq: int, index: int) -> ReceivedEvent:
    event = SessionEvent(
        session_id="ses_1", type="chunk", data={"turn_id": "trn_1", "index": index, "text": "x"}
    )
    return ReceivedEvent(seq=seq, event=event, time=None)


def request() -> Request:
    async def receive() -> dict[str, object]:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "GET", "headers": []}, receive)


async def collect(frames: AsyncIterator[bytes], n: int) -> list[bytes]:
    out = []
    async with asyncio.timeout(5):
        async for frame in frames:
            out.append(frame)
            if len(out) == n:
                break
    return out


async def test_events_received_together_leave_in_one_write_in_order() -> None:
    events = [chunk(10 + i, i) for i in range(5)]
    follower = ScriptedFollower(batches=[events[:3], events[3:]])
    frames = sse_frames(follower, request=request())
    connected, first, second = await collect(frames, 3)
    await frames.aclose()  # type: ignore[attr-defined]
    assert connected == b": connected\n\n"
    assert first == b"".join(event_frame(e) for e in events[:3])
    assert first.count(b"\n\n") == 3
    ids = [line for line in (first + second).split(b"\n") if line.startswith(b"id: ")]
    assert ids == [f"id: {10 + i}".encode() for i in range(5)]
    assert follower.closed


async def test_a_shared_event_is_framed_once() -> None:
    event = chunk(7, 0)
    assert event_frame(event) is event_frame(event)
    assert event_frame(event).startswith(b"id: 7\nevent: chunk\ndata: {")


async def test_heartbeats_while_idle() -> None:
    follower = ScriptedFollower(batches=[])
    frames = sse_frames(follower, request=request(), heartbeat_seconds=0.05)
    got = await collect(frames, 3)
    await frames.aclose()  # type: ignore[attr-defined]
    assert got[1:] == [b": heartbeat\n\n", b": heartbeat\n\n"]


async def test_stops_after_the_end_of_the_turn_in_a_batch() -> None:
    end = ReceivedEvent(
        seq=12, event=SessionEvent(session_id="ses_1", type="complete", data={}), time=None
    )
    follower = ScriptedFollower(batches=[[chunk(11, 0), end, chunk(13, 1)]])
    frames = sse_frames(follower, request=request(), stop_when=lambda e: e.type == "complete")
    got = [frame async for frame in frames]
    assert got[1] == event_frame(chunk(11, 0)) + event_frame(end)
    assert len(got) == 2 and follower.closed


async def test_events_before_the_first_seq_are_skipped() -> None:
    # A follower opened before the turn's first event (seq 20) may hold older events of the
    # session, such as a previous turn's late end: none of them is sent, nothing after is lost.
    late_end = ReceivedEvent(
        seq=18,
        event=SessionEvent(session_id="ses_1", type="complete", data={"turn_id": "trn_0"}),
        time=None,
    )
    follower = ScriptedFollower(batches=[[chunk(17, 9), late_end], [chunk(19, 3), chunk(20, 0)]])
    follower.batches.append([chunk(21, 1)])
    frames = sse_frames(follower, request=request(), first_seq=20)
    got = await collect(frames, 3)
    await frames.aclose()  # type: ignore[attr-defined]
    assert got[1:] == [event_frame(chunk(20, 0)), event_frame(chunk(21, 1))]


async def test_the_end_of_the_turn_is_sent_when_the_stream_cannot() -> None:
    follower = ScriptedFollower(batches=[])
    loop = asyncio.get_running_loop()
    turn_end: asyncio.Future[SessionEvent] = loop.create_future()
    frames = sse_frames(follower, request=request(), turn_end=turn_end)
    assert await frames.__anext__() == b": connected\n\n"
    pending = asyncio.ensure_future(frames.__anext__())
    await asyncio.sleep(0.05)
    end = SessionEvent(session_id="ses_1", type="complete", data={"turn_id": "trn_1"})
    turn_end.set_result(end)
    async with asyncio.timeout(10):
        fallback = await pending
    assert fallback.startswith(b"event: complete\n")  # no id: it did not come from the stream


def test_every_line_break_of_splitlines_is_escaped_and_the_json_kept() -> None:
    """Text with every character ``str.splitlines()`` breaks on (U+2028, U+0085 and the rest)
    stays on the ``data:`` line, so a naive line splitter reads no forged ``data:`` or ``id:``."""
    breaks = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
    text = "".join(f"{ch}data: forged\nid: 999{ch}" for ch in breaks) + " é"
    event = SessionEvent(session_id="ses_1", type="chunk", data={"text": text})
    frame = event_frame(ReceivedEvent(seq=7, event=event, time=None)).decode()
    lines = frame.splitlines()
    assert lines == [lines[0], lines[1], lines[2], ""]
    assert lines[:2] == ["id: 7", "event: chunk"]
    assert lines[2].startswith("data: ")
    assert json.loads(lines[2].removeprefix("data: ")) == {"text": text}
    assert "é" in lines[2]  # other text stays as it is
