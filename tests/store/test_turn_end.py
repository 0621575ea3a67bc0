"""The end of a turn in the store (``finish_turn``): the reply takes the session's next
position, the session counts it, and an attempt retried after a lost connection recognises its
own landed commit (SQLite and PostgreSQL)."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.engine import Engine

from kgents.clock import utc_now
from kgents.config import Settings
from kgents.platform import Platform, open_platform
from kgents.records import Turn, TurnStatus
from kgents.sessions.billing import TurnBill, turn_bill
from kgents.store.sessions_repo import SqlSessionStore
from tests.support.turns import running_turn, store_running_turn

pytestmark = pytest.mark.anyio


@dataclass
class OneSession:
    platform: Platform
    tenant_id: str
    session_id: str

    async def closed_turn(self, status: TurnStatus, reply: str) -> tuple[Turn, TurnBill]:
        """A turn stored running, then its final state and bill (not stored yet)."""
        turn, question = running_turn(
            self.session_id, self.tenant_id, started_at=utc_now(), tokens_in=3
        )
        store = self.platform.session_store
        await store_running_turn(store, turn, question, lease_until=utc_now())
        final = replace(
            turn, status=status, tokens_out=len(reply.split()), model="m", finished_at=utc_now()
        )
        return final, turn_bill(final, text=reply)

    async def message_count(self) -> int:
        session = await self.platform.session_store.get_session(self.tenant_id, self.session_id)
        assert session is not None
        return session.message_count


@contextlib.asynccontextmanager
async def one_session(tmp_path: Path, database_url: str) -> AsyncIterator[OneSession]:
    async with open_platform(Settings(data_dir=tmp_path, database_url=database_url)) as platform:
        tenant = await platform.tenancy.create_tenant(name="t", plan="pro")
        session = await platform.sessions.create_session(
            tenant_id=tenant.id, title=None, agent_type="kgent", mode="reflect"
        )
        yield OneSession(platform, tenant.id, session.id)


async def rows(platform: Platform, sql: str, **params: Any) -> list[Any]:
    async with platform.engine.connect() as connection:
        return list((await connection.execute(text(sql), params)).all())


async def test_replies_take_the_next_positions_and_the_session_counts_them(
    tmp_path: Path, database_url: str
) -> None:
    async with one_session(tmp_path, database_url) as one:
        store = one.platform.session_store
        turns = []
        # A reply, a failed turn without one, another reply.
        for status, reply in (("complete", "one two"), ("failed", ""), ("complete", "three")):
            final, bill = await one.closed_turn(status, reply)
            stored = await store.finish_turn(
                final, assistant_message=bill.message, events=bill.events
            )
            assert stored == replace(
                final, assistant_message_id=bill.message.id if bill.message else None
            )
            turns.append((final, bill))
        # Closing a closed turn changes nothing.
        final, bill = turns[-1]
        assert (
            await store.finish_turn(final, assistant_message=bill.message, events=bill.events)
            is None
        )

        messages = await rows(
            one.platform,
            "SELECT position, role, turn_id FROM messages WHERE session_id = :s ORDER BY position",
            s=one.session_id,
        )
        (first, _), (second, _), (third, last_bill) = turns
        assert messages == [
            (0, "user", first.id),
            (1, "assistant", first.id),
            (2, "user", second.id),
            (3, "user", third.id),
            (4, "assistant", third.id),
        ]
        counted = await store.get_session(one.tenant_id, one.session_id)
        assert counted is not None and counted.message_count == 5
        assert counted.tokens_used == sum(t.tokens_in + t.tokens_out for t, _ in turns) == 12
        assert last_bill.message is not None
        assert counted.last_message_at == last_bill.message.created_at
        outbox = await rows(one.platform, "SELECT id FROM usage_outbox WHERE type = 'llm.tokens'")
        assert len(outbox) == 3
        assert sorted(id_ for (id_,) in outbox) == sorted(
            event.id for _, bill in turns for event in bill.events
        )


async def test_a_retried_attempt_recognises_its_landed_commit(
    tmp_path: Path, database_url: str
) -> None:
    async with one_session(tmp_path, database_url) as one:
        store = one.platform.session_store
        assert isinstance(store, SqlSessionStore)
        final, bill = await one.closed_turn("complete", "hi")
        stored = await store.finish_turn(final, assistant_message=bill.message, events=bill.events)
        assert stored is not None

        # The attempt whose connection died after its commit: tried again, it finds the turn
        # closed exactly as it would have closed it, and writes nothing more.
        again = await store._finish_once(
            final, assistant_message=bill.message, events=bill.events, retried=True
        )
        assert again == stored
        # Closed by someone else (another end time): not this attempt's commit.
        assert final.finished_at is not None
        other = replace(final, finished_at=final.finished_at + timedelta(seconds=1))
        assert (
            await store._finish_once(
                other, assistant_message=bill.message, events=bill.events, retried=True
            )
            is None
        )
        assert await one.message_count() == 2


async def test_first_sequences_asked_for_at_once_are_stored_together(
    tmp_path: Path, database_url: str
) -> None:
    """``set_first_seq`` calls that arrive while a write is pending join it (group commit):
    every sequence is stored, in fewer write transactions than calls."""
    async with one_session(tmp_path, database_url) as one:
        platform = one.platform
        turns = []
        for _ in range(6):
            session = await platform.sessions.create_session(
                tenant_id=one.tenant_id, title=None, agent_type="kgent", mode="reflect"
            )
            turn, question = running_turn(
                session.id, one.tenant_id, started_at=utc_now(), tokens_in=3
            )
            await store_running_turn(platform.session_store, turn, question, lease_until=utc_now())
            turns.append(turn)
        writes = 0

        def counted(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            nonlocal writes
            writes += "first_seq" in statement

        # Every engine: on a SQLite file the write runs on the writer thread's own engine.
        event.listen(Engine, "before_cursor_execute", counted)
        try:
            await asyncio.gather(
                *(platform.session_store.set_first_seq(t.id, 100 + i) for i, t in enumerate(turns))
            )
        finally:
            event.remove(Engine, "before_cursor_execute", counted)
        ids = [t.id for t in turns]
        stored = await rows(platform, "SELECT id, first_seq FROM turns")
        assert sorted(seq for turn_id, seq in stored if turn_id in ids) == list(range(100, 106))
        assert 1 <= writes < len(turns)
