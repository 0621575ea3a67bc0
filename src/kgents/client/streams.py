"""Event streams that survive dropped connections.

A stream is read over as many HTTP connections as it takes. After a drop it is reopened with
``GET /v1/kgent/sessions/{id}/events`` and ``Last-Event-ID: <last id seen>``; an event whose id
is not above the last one seen is skipped, so every event is yielded once, in order, with no
gap. Consecutive attempts that bring nothing new are bounded by a ``RetryPolicy``.
"""

import codecs
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import httpx

from kgents.client.errors import ApiError, ClientError, StreamLost, Unreachable
from kgents.client.sse import SseFrame, SseParser

if TYPE_CHECKING:
    from kgents.client.http import KgentsClient

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
TURN_END_EVENTS = frozenset({"complete", "error"})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long to keep resuming: ``attempts`` in a row without a new event, then give up."""

    attempts: int = 8
    backoff_seconds: float = 0.2
    max_backoff_seconds: float = 3.0

    def delay(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return min(self.max_backoff_seconds, self.backoff_seconds * 2.0 ** (failures - 1))


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One session event: ``id`` is its stream sequence (``None`` on a fallback end event)."""

    id: int | None
    type: str
    data: dict[str, Any]

    @property
    def turn_id(self) -> str | None:
        value = self.data.get("turn_id")
        return value if isinstance(value, str) else None


@dataclass(frozen=True, slots=True)
class TurnResult:
    """How a turn ended. ``status`` is ``complete``, ``cancelled`` or ``failed``."""

    session_id: str
    turn_id: str
    status: Literal["complete", "cancelled", "failed"]
    text: str
    tokens_in: int
    tokens_out: int
    model: str | None
    message_id: str | None
    error_code: str | None = None
    error_message: str | None = None


class _Interrupted(Exception):
    """The server ended the stream early (event stream unavailable): resume it."""


_RESUMABLE: tuple[type[BaseException], ...] = (httpx.TransportError, _Interrupted)


def stream_event(frame: SseFrame) -> StreamEvent:
    event_id = int(frame.id) if frame.id is not None and frame.id.isdigit() else None
    try:
        payload: Any = json.loads(frame.data)
    except ValueError:
        payload = {"text": frame.data}
    data = payload if isinstance(payload, dict) else {"value": payload}
    return StreamEvent(id=event_id, type=frame.event, data=data)


def read_events(response: httpx.Response) -> Iterator[StreamEvent]:
    """The events of an SSE response as its bytes arrive (heartbeat comments are skipped)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    parser = SseParser()
    for piece in response.iter_bytes():
        for frame in parser.feed(decoder.decode(piece)):
            yield stream_event(frame)
    for frame in parser.feed(decoder.decode(b"", final=True)):
        yield stream_event(frame)


class ResumingStream(ABC):
    """Base of the client's streams: reading, dedupe by id, reconnecting, giving up."""

    def __init__(self, client: "KgentsClient", session_id: str) -> None:
        self._client = client
        self.session_id = session_id
        self.last_event_id: int | None = None
        self.reconnects = 0
        self._iterator: Generator[StreamEvent, None, None] | None = None

    def __iter__(self) -> Iterator[StreamEvent]:
        if self._iterator is None:
            self._iterator = self._events()
        return self._iterator

    def close(self) -> None:
        """Stop reading and close the connection (a turn keeps running on the server)."""
        if self._iterator is not None:
            self._iterator.close()

    def __enter__(self) -> "ResumingStream":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @abstractmethod
    def _open(self, *, resuming: bool) -> httpx.Response:
        """Open (or reopen after a drop) the HTTP stream."""

    @abstractmethod
    def _accept(self, event: StreamEvent) -> Literal["skip", "yield", "end"]:
        """What to do with an event: skip a repeat, yield it, or end the stream."""

    def _resume_headers(self) -> dict[str, str]:
        if self.last_event_id is None:
            return {}
        return {"Last-Event-ID": str(self.last_event_id)}

    def _events(self) -> Generator[StreamEvent, None, None]:
        response: httpx.Response | None = self._open(resuming=False)
        failures = 0
        policy = self._client.retry
        while True:
            if response is None:
                time.sleep(policy.delay(failures))
                self.reconnects += 1
                self._client.notify_reconnect(self.last_event_id)
                try:
                    response = self._open(resuming=True)
                except (Unreachable, ApiError) as exc:
                    if isinstance(exc, ApiError) and exc.status not in RETRYABLE_STATUSES:
                        raise
                    failures = self._count_failure(failures, exc)
                    continue
            seen_before = self.last_event_id
            try:
                if (yield from self._read(response)):
                    return
            except _RESUMABLE:
                pass  # the connection dropped or the server ended the stream: resume
            finally:
                response.close()
            response = None
            progressed = self.last_event_id != seen_before
            failures = 0 if progressed else self._count_failure(failures, None)

    def _count_failure(self, failures: int, cause: Exception | None) -> int:
        failures += 1
        if failures > self._client.retry.attempts:
            reason = f" ({cause.message})" if isinstance(cause, ClientError) else ""
            raise StreamLost(
                f"the event stream of session {self.session_id} could not be resumed "
                f"after {failures - 1} attempts{reason}; last event id: {self.last_event_id}",
                last_event_id=self.last_event_id,
            ) from cause
        return failures

    def _read(self, response: httpx.Response) -> Generator[StreamEvent, None, bool]:
        """Yield the new events of one connection; return True when the stream is complete."""
        for event in read_events(response):
            if event.id is not None:
                if self.last_event_id is not None and event.id <= self.last_event_id:
                    continue  # already delivered before the connection dropped
                self.last_event_id = event.id
            if event.type == "error" and event.turn_id is None:
                raise _Interrupted(str(event.data.get("error", "")))
            verdict = self._accept(event)
            if verdict == "skip":
                continue
            yield event
            if verdict == "end":
                return True
        return False


class SessionFollow(ResumingStream):
    """Every event of a session from a starting point, then live ones, until closed."""

    def __init__(
        self,
        client: "KgentsClient",
        session_id: str,
        *,
        after: int | None = None,
        from_start: bool = False,
    ) -> None:
        super().__init__(client, session_id)
        self._after = after
        self._from_start = from_start

    def _open(self, *, resuming: bool) -> httpx.Response:
        params: dict[str, str] = {}
        if self.last_event_id is None:
            if self._after is not None:
                params["after"] = str(self._after)
            elif self._from_start:
                params["from"] = "start"
        return self._client.open_stream(
            "GET",
            f"/v1/kgent/sessions/{self.session_id}/events",
            params=params,
            headers=self._resume_headers(),
        )

    def _accept(self, event: StreamEvent) -> Literal["skip", "yield", "end"]:
        return "yield"


class TurnStream(ResumingStream):
    """One turn: ``user_message``, ``chunk``… then ``complete`` or ``error``; ``result`` is set
    when the end arrives. Iterating sends the message (``POST …/messages``, ``stream=true``);
    that request is never repeated, only the following of its events."""

    def __init__(self, client: "KgentsClient", session_id: str, body: dict[str, Any]) -> None:
        super().__init__(client, session_id)
        self._body = body
        self.turn_id: str | None = None
        self.result: TurnResult | None = None
        self._message_id: str | None = None
        self._texts: list[str] = []

    def wait(self) -> TurnResult:
        """Read the turn to its end and return how it ended."""
        for _ in self:
            pass
        if self.result is None:  # pragma: no cover - the iterator only ends at the end event
            raise ClientError("the turn ended without an end event")
        return self.result

    def _open(self, *, resuming: bool) -> httpx.Response:
        path = f"/v1/kgent/sessions/{self.session_id}"
        if not resuming:
            return self._client.open_stream("POST", f"{path}/messages", json=self._body)
        if self.last_event_id is not None:
            return self._client.open_stream("GET", f"{path}/events", headers=self._resume_headers())
        # Dropped before the first event: find the stored message, then its turn from the start.
        if self._message_id is None:
            self._message_id = self._client.find_user_message(
                self.session_id, str(self._body["message"])
            )
        if self._message_id is None:
            raise StreamLost(
                "the connection dropped before the turn started; the message was not stored",
                last_event_id=None,
            )
        return self._client.open_stream("GET", f"{path}/events", params={"from": "start"})

    def _accept(self, event: StreamEvent) -> Literal["skip", "yield", "end"]:
        if self.turn_id is None:
            wanted = self._message_id
            if event.type != "user_message" or (
                wanted is not None and event.data.get("message_id") != wanted
            ):
                return "skip"  # replaying events from before this turn
            self.turn_id = event.turn_id
        elif event.turn_id != self.turn_id:
            return "skip"
        if event.type == "chunk":
            self._texts.append(str(event.data.get("text", "")))
        if event.type in TURN_END_EVENTS:
            self.result = self._result_of(event)
            return "end"
        return "yield"

    def _result_of(self, end: StreamEvent) -> TurnResult:
        data = end.data
        turn_id = self.turn_id or ""
        if end.type == "complete":
            return TurnResult(
                session_id=self.session_id,
                turn_id=turn_id,
                status="complete",
                text=str(data.get("text", "".join(self._texts))),
                tokens_in=int(data.get("tokens_in", 0)),
                tokens_out=int(data.get("tokens_out", 0)),
                model=data.get("model"),
                message_id=data.get("message_id"),
            )
        error = data.get("error")
        error = error if isinstance(error, dict) else {}
        code = str(error.get("code", "error"))
        return TurnResult(
            session_id=self.session_id,
            turn_id=turn_id,
            status="cancelled" if code == "cancelled" else "failed",
            text="".join(self._texts),
            tokens_in=0,
            tokens_out=0,
            model=None,
            message_id=None,
            error_code=code,
            error_message=str(error.get("message", code)),
        )
