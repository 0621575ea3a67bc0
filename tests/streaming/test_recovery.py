"""What a turn without the provider's usage report is billed, on a real nats-server and both
databases: a turn whose process died (``sessions/recovery.py``), its text found in JetStream,
and a turn whose provider failed mid-reply (``sessions/generation.py``). Both use the one
estimator, ``estimate_tokens`` of the generated text."""

from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from kgents.clock import utc_now
from kgents.config import Settings
from kgents.errors import ProviderError
from kgents.llm.base import GenerationRequest, StreamItem, TextDelta, estimate_tokens
from kgents.platform import Platform, build_generation, open_platform
from kgents.records import Session
from kgents.sessions.generation import PlannedTurn, TurnRunner, chunk_event, user_message_event
from kgents.sessions.recovery import TurnRecovery
from kgents.streaming.bridge import JetStreamEventLog
from tests.support.turns import running_turn, store_running_turn

pytestmark = pytest.mark.anyio

CHUNKS = ["Planning a week ", "starts with ", "what matters most."]


async def new_session(platform: Platform) -> Session:
    tenant = await platform.tenancy.create_tenant(name="acme", plan="pro")
    return await platform.sessions.create_session(
        tenant_id=tenant.id, title=None, agent_type="kgent", mode="reflect"
    )


@pytest.mark.parametrize("first_seq_stored", [True, False])
async def test_a_dead_turn_is_billed_for_its_chunks_with_or_without_its_first_sequence(
    tmp_path: Path, database_url: str, event_log: JetStreamEventLog, first_seq_stored: bool
) -> None:
    """Without its first sequence (storing it failed, or the process died first) a dead turn
    was closed with no text and billed nothing."""
    settings = Settings(data_dir=tmp_path, database_url=database_url)
    async with open_platform(settings) as platform:
        session = await new_session(platform)
        tenant_id, store = session.tenant_id, platform.session_store
        earlier, _ = running_turn(session.id, tenant_id, started_at=utc_now())
        await event_log.publish(chunk_event(earlier, index=0, text="another turn's words"))
        turn, question = running_turn(session.id, tenant_id, started_at=utc_now(), tokens_in=12)
        await store_running_turn(
            store, turn, question, lease_until=utc_now() - timedelta(seconds=1)
        )
        first_seq = await event_log.publish(user_message_event(turn, question))
        for index, text in enumerate(CHUNKS):
            await event_log.publish(chunk_event(turn, index=index, text=text))
        if first_seq_stored:
            await store.set_first_seq(turn.id, first_seq)

        generation = build_generation(platform, event_log)
        recovery = TurnRecovery(
            store=store,
            events=event_log,
            supervisor=generation.supervisor,
            lease=timedelta(seconds=15),
        )
        assert await recovery.interrupt_expired() == 1

        closed = await platform.sessions.get_turn(tenant_id=tenant_id, turn_id=turn.id)
        text = "".join(CHUNKS)
        assert replace(closed, finished_at=None) == replace(
            turn,
            status="interrupted",
            tokens_in=12,
            tokens_out=estimate_tokens(text),
            model="unknown",
            estimated=True,
            error_code="interrupted",
            first_seq=first_seq if first_seq_stored else None,
            assistant_message_id=closed.assistant_message_id,
            started_at=closed.started_at,
        )
        page = await platform.sessions.list_messages(
            tenant_id=tenant_id, session_id=session.id, limit=10, offset=0
        )
        assert [entry.message.content for entry in page.messages] == [question.content, text]
        assert [entry.turn_status for entry in page.messages] == ["interrupted"] * 2


class FailingMidReply:
    """An upstream that sends ``CHUNKS`` and then fails, without a usage report."""

    name = "failing"
    model = "failing-1"

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        for text in CHUNKS:
            yield TextDelta(text)
        raise ProviderError("upstream went away", code="provider_unavailable", retryable=True)

    async def check(self) -> str | None:
        return None

    async def aclose(self) -> None:
        return None


async def test_a_failed_turn_is_billed_by_the_same_estimator(
    tmp_path: Path, database_url: str, event_log: JetStreamEventLog
) -> None:
    """It was billed one token per chunk, where recovery and the providers estimate text."""
    settings = Settings(data_dir=tmp_path, database_url=database_url)
    async with open_platform(settings) as platform:
        session = await new_session(platform)
        turn, question = running_turn(session.id, session.tenant_id, started_at=utc_now())
        await store_running_turn(platform.session_store, turn, question, lease_until=utc_now())
        runner = TurnRunner(
            store=platform.session_store,
            provider=FailingMidReply(),
            events=event_log,
            buffer_size=8,
        )
        request = GenerationRequest(system="s", messages=(), temperature=0.5, max_tokens=100)
        outcome = await runner.run(PlannedTurn(turn=turn, request=request))
        await runner.aclose()

        stored = await platform.sessions.get_turn(tenant_id=session.tenant_id, turn_id=turn.id)
        assert (stored.status, stored.error_code, stored.estimated) == (
            "failed",
            "provider_unavailable",
            True,
        )
        assert stored.tokens_out == estimate_tokens("".join(CHUNKS)) != len(CHUNKS)
        assert outcome.turn == stored
