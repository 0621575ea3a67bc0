"""Server-Sent Events parsing, incremental: feed text as it arrives, get whole frames back.

Follows the WHATWG event-stream rules the server relies on: lines end with LF, CRLF or CR (a
CR at the end of one piece may be followed by the LF in the next), a blank line ends a frame,
``:`` starts a comment (the server's heartbeats), repeated ``data`` lines join with LF, and a
frame without data is not dispatched.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SseFrame:
    """One dispatched frame. ``id`` is the frame's own ``id:`` field (``None`` without one)."""

    id: str | None
    event: str
    data: str


class SseParser:
    """Turns pieces of an event stream into frames; keeps what a piece left unfinished."""

    def __init__(self) -> None:
        self._line = ""
        self._after_cr = False
        self._id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, text: str) -> list[SseFrame]:
        """The frames completed by ``text`` (possibly none), in order."""
        frames: list[SseFrame] = []
        start = 0
        if self._after_cr and text.startswith("\n"):
            start = 1  # the LF of a CRLF split across two pieces
        self._after_cr = False
        position = start
        length = len(text)
        while position < length:
            char = text[position]
            if char in "\r\n":
                self._line += text[start:position]
                frame = self._end_line()
                if frame is not None:
                    frames.append(frame)
                if char == "\r":
                    if position + 1 < length and text[position + 1] == "\n":
                        position += 1
                    elif position + 1 == length:
                        self._after_cr = True
                start = position + 1
            position += 1
        self._line += text[start:]
        return frames

    def _end_line(self) -> SseFrame | None:
        line, self._line = self._line, ""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SseFrame | None:
        frame = None
        if self._data:
            frame = SseFrame(
                id=self._id, event=self._event or "message", data="\n".join(self._data)
            )
        self._id, self._event, self._data = None, "", []
        return frame
