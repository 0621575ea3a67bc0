"""The hook for serving a turn's own client in process: ``TurnRunner.run(planned, listener)``
hands over each event JetStream acknowledged, with its stream sequence, as followers read it."""

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kgents.clock import utc_now
from kgents.config import Settings
from kgents.llm.base import GenerationRequest, StreamItem, TextDelta, Usage
from kgents.platform import open_platform
from kgents.sessions.generation import PlannedTurn, TurnRunner
from kgents.sessions.ports import SessionEvent
from kgents.streaming.bridge import JetStreamEventLog
from tests.support.turns import running_turn, store_running_turn

pytestmark = pytest.mark.anyio

WORDS = [f" word{i}" for i in range(40)]


class Words:
    name = "words"
    model = "words-1"

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        for word in WORDS:
            yield TextDelta(word)
        yield Usage(tokens_in=3, tokens_out=len(WORDS), model=self.model)

    async def check(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


@pytest.mark.parametrize("listener_fails", [False, True])
async def test_a_listener_gets_each_acknowledged_event_with_its_sequence(
    tmp_path: Path, database_url: str, event_log: JetStreamEventLog, listener_fails: bool
) -> None:
    told: list[tuple[int, SessionEvent]] = []

    def listener(event: SessionEvent, seq: int) -> None:
        told.append((seq, event))
        if listener_fails:
            raise RuntimeError("the client's queue is gone")

    async with open_platform(Settings(data_dir=tmp_path, database_url=database_url)) as platform:
        tenant = await platform.tenancy.create_tenant(name="acme", plan="pro")
        session = await platform.sessions.create_session(
            tenant_id=tenant.id, title=None, agent_type="kgent", mode="reflect"
        )
        turn, question = running_turn(session.id, tenant.id, started_at=utc_now())
        await store_running_turn(platform.session_store, turn, question, lease_until=utc_now())
        runner = TurnRunner(
            store=platform.session_store, provider=Words(), events=event_log, buffer_size=8
        )
        request = GenerationRequest(system="s", messages=(), temperature=0.5, max_tokens=99)
        outcome = await runner.run(PlannedTurn(turn=turn, request=request), listener)
        await runner.aclose()

    # A failing listener does not stop the turn.
    assert outcome.turn.status == "complete" and outcome.end_seq == told[-1][0]
    stored: list[tuple[int, SessionEvent]] = []
    async for seq, event in event_log.follow(session.id, after_seq=None, from_start=True):
        stored.append((seq, event))
        if event.type == "complete":
            break
    assert told == stored  # the same events, sequences and order as any follower reads
    assert "".join(e.data["text"] for _, e in told if e.type == "chunk") == "".join(WORDS)
