"""``MeasuredEventLog``: the sessions' event log, with its publishing measured.

It wraps the real ``SessionEventLog`` where the application is composed, so neither the
generation (a service: no Prometheus there) nor the JetStream adapter knows about metrics. What
it sees is what the generation waits for: each publish until its ack (a turn's start, its
chunks, its end), chunks published, the time from a turn's start to its first acknowledged
chunk, and how each turn ended.
"""

import time
from typing import Any

from kgents.observability.metrics import Metrics
from kgents.sessions.ports import Follower, SessionEvent, SessionEventLog


class MeasuredEventLog:
    """A ``SessionEventLog`` that measures publishing and passes everything else through."""

    def __init__(self, inner: SessionEventLog, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics
        # The labelled children looked up once: ``labels`` per event was a lookup each time.
        self._chunk_seconds = metrics.publish_seconds.labels("chunk")
        self._start_seconds = metrics.publish_seconds.labels("start")
        self._end_seconds = metrics.publish_seconds.labels("end")
        self._started: dict[str, float] = {}  # turn id -> start, until its first chunk

    @property
    def inner(self) -> SessionEventLog:
        return self._inner

    def is_connected(self) -> bool:
        return self._inner.is_connected()

    async def wait_connected(self, wait_seconds: float) -> bool:
        return await self._inner.wait_connected(wait_seconds)

    async def publish(self, event: SessionEvent) -> int:
        metrics = self._metrics
        began = time.perf_counter()
        seq = await self._inner.publish(event)
        now = time.perf_counter()
        kind = event.type
        turn_id = event.data.get("turn_id")
        if kind == "chunk":
            self._chunk_seconds.observe(now - began)
            metrics.chunks_published.inc()
            started = self._started.pop(turn_id, None) if isinstance(turn_id, str) else None
            if started is not None:
                metrics.time_to_first_chunk.observe(now - started)
        elif kind == "user_message":
            self._start_seconds.observe(now - began)
            if isinstance(turn_id, str):
                self._started[turn_id] = now
        else:
            self._end_seconds.observe(now - began)
            metrics.turns_finished.labels(_outcome(event)).inc()
            if isinstance(turn_id, str):
                self._started.pop(turn_id, None)
        return seq

    async def open_follower(
        self, session_id: str, *, after_seq: int | None, from_start: bool = False
    ) -> Follower:
        return await self._inner.open_follower(
            session_id, after_seq=after_seq, from_start=from_start
        )

    async def request_cancel(self, session_id: str) -> None:
        await self._inner.request_cancel(session_id)

    async def turn_chunks(self, session_id: str, turn_id: str, *, first_seq: int) -> list[str]:
        return await self._inner.turn_chunks(session_id, turn_id, first_seq=first_seq)

    def __getattr__(self, name: str) -> Any:
        # Anything beyond the port (adapter extras) is the wrapped log's own.
        return getattr(self._inner, name)


def _outcome(event: SessionEvent) -> str:
    if event.type == "complete":
        return "complete"
    error = event.data.get("error")
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) and code.isidentifier() else "error"
