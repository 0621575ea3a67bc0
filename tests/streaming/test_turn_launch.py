"""A turn's provider is asked while its ``user_message`` awaits the JetStream ack
(``TurnSupervisor.launch``), and nothing of the reply reaches the stream before that ack.

The nats-server is frozen (SIGSTOP) to hold the ack: the publish reaches its socket, and no
answer comes back until it is thawed (SIGCONT).
"""

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from kgents.clock import utc_now
from kgents.config import Settings
from kgents.errors import EventsUnavailable, ProviderError
from kgents.llm.base import GenerationRequest, StreamItem, TextDelta, Usage
from kgents.platform import Platform, open_platform
from kgents.records import Message
from kgents.sessions.generation import PlannedTurn, TurnOutcome, TurnRunner
from kgents.sessions.persona import DORMANT_REPLY
from kgents.sessions.ports import SessionEvent
from kgents.sessions.supervisor import TurnSupervisor
from kgents.streaming.bridge import JetStreamEventLog
from kgents.streaming.connection import NatsConnection
from tests.support.nats import NatsServer
from tests.support.turns import running_turn, store_running_turn
from tests.support.waiting import until

pytestmark = pytest.mark.anyio

WORDS = [f" word{i}" for i in range(20)]
PROMPT_TOKENS = 50
REQUEST = GenerationRequest(system="s", messages=(), temperature=0.5, max_tokens=99)


class Watched:
    """A provider that says when it was asked and when its stream was closed. ``mode``:
    ``words`` replies ``WORDS``; ``fail`` refuses at once; ``hang`` sends one word, then
    nothing."""

    name = "watched"
    model = "watched-1"

    def __init__(self, mode: str = "words") -> None:
        self.mode = mode
        self.asked = asyncio.Event()
        self.closed = asyncio.Event()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        self.asked.set()
        try:
            if self.mode == "fail":
                raise ProviderError("refused", code="provider_refused", retryable=False)
            for word in WORDS:
                yield TextDelta(word)
                if self.mode == "hang":
                    await asyncio.get_running_loop().create_future()
            yield Usage(tokens_in=3, tokens_out=len(WORDS), model=self.model)
        finally:
            self.closed.set()

    async def check(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (``kill`` returns before they all are)."""
    stats = [(task / "stat").read_text() for task in Path(f"/proc/{pid}/task").iterdir()]
    return all(stat.rsplit(")", 1)[1].split()[0] == "T" for stat in stats)


@contextlib.contextmanager
def frozen(server: NatsServer) -> Iterator[None]:
    """``server`` stopped for the block (SIGSTOP), continued after it (SIGCONT)."""
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        until(lambda: all_threads_stopped(pid), every=0.001)
        yield
    finally:
        os.kill(server.pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def a_turn(
    tmp_path: Path, database_url: str, log: JetStreamEventLog, provider: Watched, *, dormant: bool
) -> AsyncIterator[tuple[Platform, TurnSupervisor, PlannedTurn, Message]]:
    """A stored running turn and the supervisor that launches it."""
    async with open_platform(Settings(data_dir=tmp_path, database_url=database_url)) as platform:
        tenant = await platform.tenancy.create_tenant(name="acme", plan="pro")
        session = await platform.sessions.create_session(
            tenant_id=tenant.id, title=None, agent_type="kgent", mode="reflect"
        )
        turn, question = running_turn(
            session.id, tenant.id, started_at=utc_now(), tokens_in=PROMPT_TOKENS
        )
        await store_running_turn(platform.session_store, turn, question, lease_until=utc_now())
        runner = TurnRunner(
            store=platform.session_store, provider=provider, events=log, buffer_size=8
        )
        supervisor = TurnSupervisor(runner)
        planned = PlannedTurn(turn=turn, request=None if dormant else REQUEST)
        try:
            yield platform, supervisor, planned, question
        finally:
            await supervisor.shutdown(grace_seconds=5.0)


async def turn_events(log: JetStreamEventLog, session_id: str) -> list[tuple[int, SessionEvent]]:
    """The session's events in the stream, up to its turn's end event."""
    got: list[tuple[int, SessionEvent]] = []
    async with asyncio.timeout(10):
        follow = log.follow(session_id, after_seq=None, from_start=True)
        async with contextlib.aclosing(follow) as events:
            async for seq, event in events:
                got.append((seq, event))
                if event.type in ("complete", "error"):
                    return got
    return got


async def launch_held(
    nats: NatsServer,
    supervisor: TurnSupervisor,
    planned: PlannedTurn,
    question: Message,
    meanwhile: Callable[[], Awaitable[object]],
) -> tuple[int, TurnOutcome]:
    """Launch ``planned`` while the nats-server holds its acks, await ``meanwhile`` (the launch
    still waiting for the ``user_message``'s ack), then let the server answer; the turn's first
    sequence and its outcome."""
    with frozen(nats):
        launching = asyncio.create_task(supervisor.launch(planned, question))
        async with asyncio.timeout(10):
            await meanwhile()
        assert not launching.done()
    first_seq, task = await launching
    return first_seq, await task


@pytest.mark.parametrize("dormant", [False, True])
async def test_the_provider_is_asked_while_the_user_message_awaits_its_ack(
    tmp_path: Path, database_url: str, nats: NatsServer, event_log: JetStreamEventLog, dormant: bool
) -> None:
    provider = Watched()
    async with a_turn(tmp_path, database_url, event_log, provider, dormant=dormant) as started:
        _, supervisor, planned, question = started
        # Asked before the user_message's ack (a dormant turn asks no one).
        meanwhile = (lambda: asyncio.sleep(0)) if dormant else provider.asked.wait
        first_seq, outcome = await launch_held(nats, supervisor, planned, question, meanwhile)

    events = await turn_events(event_log, planned.turn.session_id)
    types = [event.type for _, event in events]
    assert types == ["user_message", *["chunk"] * (len(events) - 2), "complete"]
    assert (events[0][0], events[-1][0]) == (first_seq, outcome.end_seq)
    texts = [str(event.data["text"]) for _, event in events[1:-1]]
    indexes = [event.data["index"] for _, event in events[1:-1]]
    assert indexes == [sum(text.count(" word") for text in texts[:i]) for i in range(len(texts))]
    streamed = "".join(texts)
    assert streamed == (DORMANT_REPLY if dormant else "".join(WORDS))
    assert outcome.turn.status == "complete" and outcome.message is not None
    assert outcome.message.content == streamed
    assert provider.asked.is_set() is not dormant


async def test_a_user_message_that_cannot_be_published_closes_the_provider_and_fails_the_turn(
    tmp_path: Path,
    database_url: str,
    nats: NatsServer,
    conn: NatsConnection,
    event_log: JetStreamEventLog,  # the streams exist
) -> None:
    log = JetStreamEventLog(conn, ack_timeout=0.2, failover_seconds=0.5)
    provider = Watched("hang")
    async with a_turn(tmp_path, database_url, log, provider, dormant=False) as started:
        platform, supervisor, planned, question = started
        with frozen(nats), pytest.raises(EventsUnavailable):
            await supervisor.launch(planned, question)
        # By the time the caller hears of it the provider's stream is closed, the task is
        # over and the turn is closed as failed, without its first word or a bill.
        assert provider.asked.is_set() and provider.closed.is_set()
        assert supervisor.active == 0
        stored = await platform.session_store.get_turn(planned.turn.tenant_id, planned.turn.id)
        assert stored is not None
        assert (stored.status, stored.error_code) == ("failed", "events_unavailable")
        assert (stored.tokens_in, stored.tokens_out, stored.assistant_message_id) == (0, 0, None)


@pytest.mark.parametrize(
    ("ending", "status", "code"),
    [("provider fails", "failed", "provider_refused"), ("cancel", "cancelled", "cancelled")],
)
async def test_a_turn_that_ends_before_the_ack_ends_after_its_user_message(
    tmp_path: Path,
    database_url: str,
    nats: NatsServer,
    event_log: JetStreamEventLog,
    ending: str,
    status: str,
    code: str,
) -> None:
    provider = Watched("fail" if ending == "provider fails" else "hang")
    async with a_turn(tmp_path, database_url, event_log, provider, dormant=False) as started:
        _, supervisor, planned, question = started

        async def end_it() -> None:
            await provider.asked.wait()
            if ending == "cancel":
                assert supervisor.cancel(planned.turn.session_id)
            await provider.closed.wait()

        first_seq, outcome = await launch_held(nats, supervisor, planned, question, end_it)

    events = await turn_events(event_log, planned.turn.session_id)
    assert [(seq, event.type, event.data.get("error")) for seq, event in events] == [
        (first_seq, "user_message", None),
        (
            outcome.end_seq,
            "error",
            {"code": code, "message": outcome.error and outcome.error.message},
        ),
    ]
    assert (outcome.turn.status, outcome.turn.error_code) == (status, code)
    assert (outcome.turn.tokens_in, outcome.turn.tokens_out, outcome.message) == (0, 0, None)
