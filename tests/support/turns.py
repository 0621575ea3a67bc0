"""Records of a running turn and its question, for tests that write turns through the store."""

from collections.abc import Sequence
from datetime import datetime

from kgents.ids import new_id
from kgents.records import Message, Turn, UsageEvent
from kgents.sessions.ports import NewTurn, SessionStore, TurnStartQuery, TurnStartReads


def running_turn(
    session_id: str, tenant_id: str, *, started_at: datetime, tokens_in: int = 0
) -> tuple[Turn, Message]:
    """A new running turn of ``session_id`` and the user message that asks it."""
    turn = Turn(
        id=new_id("turn"),
        session_id=session_id,
        tenant_id=tenant_id,
        status="running",
        mode="reflect",
        budget="dialogue",
        user_message_id=new_id("msg"),
        assistant_message_id=None,
        tokens_in=tokens_in,
        tokens_out=0,
        model=None,
        estimated=False,
        error_code=None,
        first_seq=None,
        started_at=started_at,
        finished_at=None,
    )
    question = Message(
        id=turn.user_message_id,
        session_id=session_id,
        tenant_id=tenant_id,
        turn_id=turn.id,
        role="user",
        content="hello",
        tokens_in=0,
        tokens_out=0,
        model=None,
        created_at=started_at,
    )
    return turn, question


async def store_running_turn(
    store: SessionStore,
    turn: Turn,
    question: Message,
    *,
    lease_until: datetime,
    events: Sequence[UsageEvent] = (),
) -> None:
    """Store ``turn`` and its question as production does: one ``start_turn`` transaction
    (without counting a request or reading the quota)."""
    query = TurnStartQuery(
        tenant_id=turn.tenant_id,
        session_id=turn.session_id,
        count_key=None,
        window_start=None,
        tokens_since=None,
        history_limit=0,
    )

    def plan(reads: TurnStartReads) -> NewTurn:
        assert reads.session is not None
        return NewTurn(turn=turn, user_message=question, events=events, lease_until=lease_until)

    await store.start_turn(query, plan)
