"""The client's incremental SSE parser: frames come out whole however the bytes are split."""

import pytest

from kgents.client import SseFrame, SseParser

STREAM = (
    ": connected\n\n"
    'id: 7\nevent: user_message\ndata: {"turn_id":"turn_1","content":"héllo"}\n\n'
    ": heartbeat\n\n"
    'id: 8\r\nevent: chunk\r\ndata: {"text":" a"}\r\n\r\n'
    "event: complete\rdata: first line\rdata: second line\r\r"
    "id: 9\nevent: empty\n\n"  # no data: not dispatched
    "data:no space\n\n"
)
EXPECTED = [
    SseFrame(id="7", event="user_message", data='{"turn_id":"turn_1","content":"héllo"}'),
    SseFrame(id="8", event="chunk", data='{"text":" a"}'),
    SseFrame(id=None, event="complete", data="first line\nsecond line"),
    SseFrame(id=None, event="message", data="no space"),
]


def test_whole_stream_at_once() -> None:
    assert SseParser().feed(STREAM) == EXPECTED


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 13, 64])
def test_any_split_gives_the_same_frames(size: int) -> None:
    parser = SseParser()
    frames = []
    for start in range(0, len(STREAM), size):
        frames.extend(parser.feed(STREAM[start : start + size]))
    assert frames == EXPECTED


def test_crlf_split_between_pieces_is_one_line_end() -> None:
    parser = SseParser()
    assert parser.feed("data: x\r") == []
    assert parser.feed("\n\r") == [SseFrame(id=None, event="message", data="x")]
    assert parser.feed("\ndata: y\n\n") == [SseFrame(id=None, event="message", data="y")]


def test_an_unfinished_frame_is_held_back() -> None:
    parser = SseParser()
    assert parser.feed('id: 3\nevent: chunk\ndata: {"text"') == []
    assert parser.feed(':"x"}\n\n') == [SseFrame(id="3", event="chunk", data='{"text":"x"}')]
