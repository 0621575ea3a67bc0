"""``MeasuredEventLog``: the sessions' event log, with its publishing measured.

It wraps the real ``SessionEventLog`` where the application is composed, so neither the
generation (a service: no Prometheus there) nor the JetStream adapter knows about metrics. What
it sees is what the generation waits for: a sync ``publish`` (ack awaited), each pipelined
``batch_add`` (which waits only when the ack window is full) and the ``flush`` at the end of a
turn; plus chunks published, the time from the start of a turn to its first chunk, and how
each turn ended.
"""

import time
from typing import Any

from kgents.observability.metrics import Metrics
from kgents.sessions.ports import EventBatch, Follower, SessionEvent, SessionEventLog


class MeasuredBatch:
    """One turn's ``EventBatch``, measured. Made when the turn's generation starts."""

    def __init__(self, inner: EventBatch, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics
        self._started = time.perf_counter()
        self._first_chunk_seen = False

    async def add(self, event: SessionEvent) -> None:
        metrics = self._metrics
        began = time.perf_counter()
        await self._inner.add(event)
        now = time.perf_counter()
        metrics.publish_seconds.labels("batch_add").observe(now - began)
        if event.type == "chunk":
            metrics.chunks_published.inc()
            if not self._first_chunk_seen:
                self._first_chunk_seen = True
                metrics.time_to_first_chunk.observe(now - self._started)
        elif event.type in ("complete", "error"):
            metrics.turns_finished.labels(_outcome(event)).inc()

    async def flush(self) -> None:
        began = time.perf_counter()
        await self._inner.flush()
        self._metrics.publish_seconds.labels("flush").observe(time.perf_counter() - began)


class MeasuredEventLog:
    """A ``SessionEventLog`` that measures publishing and passes everything else through."""

    def __init__(self, inner: SessionEventLog, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    @property
    def inner(self) -> SessionEventLog:
        return self._inner

    def is_connected(self) -> bool:
        return self._inner.is_connected()

    async def publish(self, event: SessionEvent) -> int:
        began = time.perf_counter()
        seq = await self._inner.publish(event)
        self._metrics.publish_seconds.labels("publish").observe(time.perf_counter() - began)
        return seq

    def batch(self) -> MeasuredBatch:
        return MeasuredBatch(self._inner.batch(), self._metrics)

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
