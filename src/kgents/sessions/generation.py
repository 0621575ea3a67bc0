"""The generation task: provider stream -> session events -> one final transaction.

It runs detached from any HTTP connection. The provider is asked while the turn's
``user_message`` event awaits its ack (``open``, beside ``run``); nothing of the reply is
published before that ack. Then one publish is in flight per turn: a text delta
is published as a ``chunk`` event at once when nothing is awaiting an ack; the deltas that
arrive while the previous chunk is unacknowledged go out together as the next one (``text``
joined, ``index`` the first delta's). The provider is read ahead into a bounded buffer meanwhile
and is not read further while it is full (through a NATS failover, too). The reply is the text
of the acknowledged chunks, nothing else. When the provider finishes (or fails, or the turn is
cancelled) the reply, the turn's final state and its ``llm.tokens`` usage event are stored in one
transaction, and only then is ``complete`` or ``error`` published.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass, replace
from typing import Any

from kgents.clock import utc_now
from kgents.errors import EventsUnavailable, KgentsError, ProviderError
from kgents.flux import FluxStream
from kgents.llm.base import (
    GenerationRequest,
    LLMProvider,
    StreamItem,
    TextDelta,
    Usage,
    estimate_tokens,
)
from kgents.records import Message, Turn, TurnStatus
from kgents.sessions.billing import turn_bill
from kgents.sessions.persona import DORMANT_REPLY
from kgents.sessions.ports import SessionEvent, SessionEventLog, SessionStore

logger = logging.getLogger(__name__)

END_RETRY_FIRST_SECONDS = 0.5
END_RETRY_MAX_SECONDS = 10.0
END_RETRY_SECONDS = 600.0
"""How long a turn's end event is retried while the event stream is unavailable."""

AckListener = Callable[[SessionEvent, int], None]
"""Told of each event of a turn that JetStream acknowledged, with its stream sequence, in
stream order, as soon as the ack is in (``user_message``, the chunks, then ``complete`` or
``error``)."""


@dataclass(frozen=True, slots=True)
class PlannedTurn:
    """A stored, running turn and what to ask the model (``None``: dormant, no model call)."""

    turn: Turn
    request: GenerationRequest | None


@dataclass(frozen=True, slots=True)
class TurnOutcome:
    turn: Turn
    message: Message | None
    error: KgentsError | None
    chunks: int = 0
    end_seq: int | None = None
    """Stream sequence of the turn's ``complete`` or ``error`` event once acknowledged
    (``None``: not published yet, retried in the background)."""

    def end_event(self) -> SessionEvent:
        """The ``complete`` or ``error`` event that ends this turn for its followers."""
        if self.error is None and self.message is not None:
            return complete_event(self.turn, message=self.message, chunks=self.chunks)
        code = self.error.code if self.error else "empty_reply"
        text = self.error.message if self.error else "no reply"
        return error_event(self.turn, code=code, message=text)


@dataclass(slots=True)
class _Progress:
    text: list[str]  # of the acknowledged chunks
    tokens: int = 0  # text deltas in the acknowledged chunks (the next chunk's index)
    chunks: int = 0  # acknowledged chunk events
    usage: Usage | None = None


def user_message_event(turn: Turn, message: Message) -> SessionEvent:
    return SessionEvent(
        session_id=turn.session_id,
        type="user_message",
        data={
            "turn_id": turn.id,
            "message_id": message.id,
            "content": message.content,
            "created_at": message.created_at.isoformat(),
        },
        msg_id=f"{turn.id}:start",
    )


def chunk_event(turn: Turn, *, index: int, text: str) -> SessionEvent:
    return SessionEvent(
        session_id=turn.session_id,
        type="chunk",
        data={"turn_id": turn.id, "text": text, "index": index},
        msg_id=f"{turn.id}:{index}",
    )


def error_event(turn: Turn, *, code: str, message: str) -> SessionEvent:
    return SessionEvent(
        session_id=turn.session_id,
        type="error",
        data={"turn_id": turn.id, "error": {"code": code, "message": message}},
        msg_id=f"{turn.id}:end",
    )


def complete_event(turn: Turn, *, message: Message, chunks: int) -> SessionEvent:
    return SessionEvent(
        session_id=turn.session_id,
        type="complete",
        data={
            "turn_id": turn.id,
            "message_id": message.id,
            "text": message.content,
            "tokens_in": turn.tokens_in,
            "tokens_out": turn.tokens_out,
            "model": turn.model,
            "chunks": chunks,
        },
        msg_id=f"{turn.id}:end",
    )


def _tell(listener: AckListener, event: SessionEvent, seq: int) -> None:
    """Hand an acknowledged event to ``listener``; its failure never stops the turn."""
    try:
        listener(event, seq)
    except Exception:
        logger.exception("a listener of turn events failed on %s", event.msg_id)


def _publish_failure(opened: "asyncio.Future[int]") -> KgentsError | None:
    """Why the turn's ``user_message`` was not published (``None``: it was)."""
    if opened.cancelled():
        return EventsUnavailable("the turn's first event was not published")
    error = opened.exception()
    if error is None or isinstance(error, KgentsError):
        return error
    return EventsUnavailable(f"the turn's first event was not published: {error!r}")


async def _dormant_stream(turn: Turn) -> AsyncIterator[StreamItem]:
    """The fixed reply of a dormant turn, billed for its stored message (no model call)."""
    yield TextDelta(DORMANT_REPLY)
    yield Usage(tokens_in=turn.tokens_in, tokens_out=0, model="none", estimated=True)


class TurnRunner:
    """Runs planned turns against one provider and one event log."""

    def __init__(
        self,
        *,
        store: SessionStore,
        provider: LLMProvider,
        events: SessionEventLog,
        buffer_size: int,
    ) -> None:
        self._store = store
        self._provider = provider
        self._events = events
        self._buffer_size = buffer_size
        self._background: set[asyncio.Task[None]] = set()  # strong references until done

    async def open(
        self, planned: PlannedTurn, user_message: Message, listener: AckListener | None = None
    ) -> int:
        """Publish the turn's ``user_message`` event and return its stream sequence (and tell
        ``listener`` of it).

        Run it as a task given to ``run(planned, opened=...)``, which asks the provider
        meanwhile and closes the turn if this publish fails.

        The sequence is stored on the turn in the background, not before the reply starts:
        only the recovery of a turn whose process died reads it (to find its chunks).
        """
        event = user_message_event(planned.turn, user_message)
        seq = await self._events.publish(event)
        if listener is not None:
            _tell(listener, event, seq)
        self._in_background(
            self._store_first_seq(planned.turn.id, seq), name=f"first-seq:{planned.turn.id}"
        )
        return seq

    async def _store_first_seq(self, turn_id: str, seq: int) -> None:
        try:
            await self._store.set_first_seq(turn_id, seq)
        except Exception:
            # The turn runs on; if its process dies, recovery finds its chunks among the
            # session's without it.
            logger.warning("could not store the first sequence of turn %s", turn_id, exc_info=True)

    async def run(
        self,
        planned: PlannedTurn,
        listener: AckListener | None = None,
        *,
        opened: "asyncio.Future[int] | None" = None,
    ) -> TurnOutcome:
        """Generate, publish and store the reply of ``planned``; never raises a domain error.

        ``opened`` is the turn's ``open`` while its ack is awaited: the provider is asked and
        read ahead meanwhile, and nothing of the turn is published before that ack. If it
        fails, the turn is closed as ``failed`` with no end event (nothing was published,
        nothing is billed). ``listener`` is told of each acknowledged event of the turn (see
        ``AckListener``). If the task is cancelled, the turn is stored as ``cancelled`` with
        what was published and that outcome is returned.
        """
        turn = planned.turn
        progress = _Progress(text=[])
        source = (
            self._provider.stream(planned.request) if planned.request else _dormant_stream(turn)
        )
        status: TurnStatus = "complete"
        error: KgentsError | None = None
        try:
            try:
                await self._pump(turn, source, progress, listener, opened)
            finally:
                if opened is not None:
                    await asyncio.wait([opened])  # the turn's end event follows its start
        except ProviderError as exc:
            status, error = "failed", exc
        except EventsUnavailable as exc:
            status, error = "failed", exc
        except asyncio.CancelledError:
            # Cancelling the task is how a turn is cancelled on purpose (or at shutdown): the
            # turn is stored as ``cancelled`` and this task ends normally with that outcome.
            cancelled = KgentsError("the turn was cancelled", code="cancelled")
            return await asyncio.shield(
                self._close_opened(
                    planned, progress, listener, opened, status="cancelled", error=cancelled
                )
            )
        return await self._close_opened(
            planned, progress, listener, opened, status=status, error=error
        )

    async def _pump(
        self,
        turn: Turn,
        source: AsyncIterator[StreamItem],
        progress: _Progress,
        listener: AckListener | None,
        opened: "asyncio.Future[int] | None",
    ) -> None:
        # Each step takes every item read while the previous chunk awaited its ack. Closed
        # however the pump ends, so the provider's stream never outlives it.
        async with aclosing(FluxStream(source).batches(self._buffer_size)) as batches:
            async for items in batches:
                texts = []
                for item in items:
                    if isinstance(item, Usage):
                        progress.usage = item
                    elif item.text:
                        texts.append(item.text)
                if not texts:
                    continue
                if opened is not None:
                    # Shielded: cancelling the turn does not cancel its user_message publish.
                    await asyncio.shield(opened)
                    opened = None
                text = texts[0] if len(texts) == 1 else "".join(texts)
                event = chunk_event(turn, index=progress.tokens, text=text)
                seq = await self._events.publish(event)  # retried through a failover, same id
                progress.text.append(text)
                progress.tokens += len(texts)
                progress.chunks += 1
                if listener is not None:
                    _tell(listener, event, seq)

    def _final_turn(self, planned: PlannedTurn, progress: _Progress, status: TurnStatus) -> Turn:
        usage = progress.usage
        if usage is None:
            # No usage report (failure, cancellation): bill what was generated, as an estimate
            # (the prompt estimate was stored with the turn). A request that produced nothing
            # is not billed: the provider refused it.
            usage = Usage(
                tokens_in=planned.turn.tokens_in if progress.chunks else 0,
                tokens_out=estimate_tokens("".join(progress.text)),
                model=self._provider.model,
                estimated=True,
            )
        turn = planned.turn
        return replace(
            turn,
            status=status,
            tokens_in=usage.tokens_in,
            tokens_out=usage.tokens_out,
            model=usage.model,
            estimated=usage.estimated,
            finished_at=utc_now(),
        )

    async def _close_opened(
        self,
        planned: PlannedTurn,
        progress: _Progress,
        listener: AckListener | None,
        opened: "asyncio.Future[int] | None",
        *,
        status: TurnStatus,
        error: KgentsError | None,
    ) -> TurnOutcome:
        """Close the turn once its ``user_message`` publish is over; if that failed, as
        ``failed`` with no end event and nothing billed (whatever the provider sent)."""
        if opened is not None:
            await asyncio.wait([opened])
            unpublished = _publish_failure(opened)
            if unpublished is not None:
                return await self._close(
                    planned,
                    _Progress(text=[]),
                    listener,
                    status="failed",
                    error=unpublished,
                    publish_end=False,
                )
        return await self._close(planned, progress, listener, status=status, error=error)

    async def _close(
        self,
        planned: PlannedTurn,
        progress: _Progress,
        listener: AckListener | None,
        *,
        status: TurnStatus,
        error: KgentsError | None,
        publish_end: bool = True,
    ) -> TurnOutcome:
        final = self._final_turn(planned, progress, status)
        if error is not None:
            final = replace(final, error_code=error.code)
        bill = turn_bill(final, text="".join(progress.text))
        stored = await self._store.finish_turn(
            final, assistant_message=bill.message, events=bill.events
        )
        if stored is None:
            # Someone else (start-up recovery on another replica) closed this turn first.
            return TurnOutcome(turn=final, message=None, error=error, chunks=progress.chunks)
        outcome = TurnOutcome(
            turn=stored, message=bill.message, error=error, chunks=progress.chunks
        )
        if publish_end:
            outcome = replace(outcome, end_seq=await self._publish_end(outcome, listener))
        return outcome

    async def _publish_end(self, outcome: TurnOutcome, listener: AckListener | None) -> int | None:
        """Publish the turn's end event; its sequence, or ``None`` if left to the background."""
        end = outcome.end_event()
        if not isinstance(outcome.error, EventsUnavailable):
            try:
                seq = await self._events.publish(end)
            except EventsUnavailable:
                pass
            else:
                if listener is not None:
                    _tell(listener, end, seq)
                return seq
        # The stream failed for longer than a failover (now or while the turn ran): the turn
        # is stored; its followers learn its end once the stream is back.
        logger.warning("could not publish the end of turn %s; retrying", outcome.turn.id)
        self._in_background(self._publish_end_later(end), name=f"end:{outcome.turn.id}")
        return None

    async def _publish_end_later(self, end: SessionEvent) -> None:
        """Publish a turn's end event once the stream is back (its message id makes a copy
        that did reach the stream a duplicate, which JetStream drops)."""
        delay = END_RETRY_FIRST_SECONDS
        deadline = asyncio.get_running_loop().time() + END_RETRY_SECONDS
        while True:
            await asyncio.sleep(delay)
            try:
                await self._events.publish(end)
            except EventsUnavailable:
                if asyncio.get_running_loop().time() + delay > deadline:
                    logger.error("gave up publishing the end of %s", end.msg_id)
                    return
                delay = min(delay * 2, END_RETRY_MAX_SECONDS)
            else:
                logger.info("published the end of %s after the stream came back", end.msg_id)
                return

    def _in_background(self, work: Coroutine[Any, Any, None], *, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self) -> None:
        """Stop the background work (first sequences, late end events) of this runner."""
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
