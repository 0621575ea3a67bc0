"""The turn start at driver level (``driver_sql``): statements compiled once per dialect, no
ORM, over a synchronous ``Connection``, so the whole start (read, plan, write) is one step,
run in one trip to the SQLite writer's thread (``sqlite_thread``) or in
``AsyncConnection.run_sync`` (PostgreSQL).

Whether the session runs a turn is not read: the turn's own insert answers it (the partial
unique index on running turns, ``ON CONFLICT ... DO NOTHING``), and a first turn, whose session
holds no message yet, reads no history.
"""

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Table, bindparam, select, text, update
from sqlalchemy.engine import Connection, Dialect

from kgents.records import Message, Session
from kgents.sessions.ports import NewTurn, TurnPlan, TurnStartQuery, TurnStartReads
from kgents.store.driver_sql import DriverStatement, RowInsert
from kgents.store.outbox_sql import OutboxSql
from kgents.store.quota_sql import month_tokens_statement, require_month_start
from kgents.store.rate_limit_repo import request_count_statement
from kgents.store.schema import MessageRow, SessionRow, TurnRow

SESSIONS: Table = SessionRow.__table__  # type: ignore[assignment]
MESSAGES: Table = MessageRow.__table__  # type: ignore[assignment]
TURNS: Table = TurnRow.__table__  # type: ignore[assignment]

_SESSION_COLUMNS = [
    "id",
    "tenant_id",
    "title",
    "agent_type",
    "mode",
    "status",
    "message_count",
    "tokens_used",
    "created_at",
    "last_message_at",
    "deleted_at",
]
_MESSAGE_COLUMNS = [
    "id",
    "session_id",
    "tenant_id",
    "turn_id",
    "role",
    "content",
    "tokens_in",
    "tokens_out",
    "model",
    "created_at",
]


class TurnStartSql:
    """The statements of ``SessionStore.start_turn`` for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        self._count = DriverStatement(
            request_count_statement(dialect.name), dialect, ["count_key", "window"]
        )
        s = SESSIONS.c
        self._lock_session = DriverStatement(
            select(*(s[name] for name in _SESSION_COLUMNS))
            .where(s.id == bindparam("session_id"))
            .with_for_update(),
            dialect,
            ["session_id"],
        )
        self._month_tokens = DriverStatement(
            month_tokens_statement(), dialect, ["tenant", "month_start"]
        )
        m = MESSAGES.c
        self._history = DriverStatement(
            select(*(m[name] for name in _MESSAGE_COLUMNS))
            .where(m.session_id == bindparam("session_id"))
            .order_by(m.position.desc())
            .limit(bindparam("limit")),
            dialect,
            ["session_id", "limit"],
        )
        # At most one running turn per session: a second one is not inserted (no error, so
        # the transaction goes on to commit the request's count).
        self._insert_turn = RowInsert(
            TURNS,
            dialect,
            lambda insert: insert.on_conflict_do_nothing(
                index_elements=["session_id"], index_where=text("status = 'running'")
            ).returning(TURNS.c.id),
        )
        self._insert_message = MessageInsert(dialect)
        self._count_message = DriverStatement(
            update(SESSIONS)
            .where(s.id == bindparam("session_id"))
            .values(message_count=bindparam("count"), last_message_at=bindparam("at")),
            dialect,
            ["count", "at", "session_id"],
        )
        self._outbox = OutboxSql(dialect)

    def start(
        self, connection: Connection, *, query: TurnStartQuery, plan: TurnPlan
    ) -> tuple[NewTurn | None, bool]:
        """Read what ``query`` asks, call ``plan`` and write the ``NewTurn`` it returns:
        ``(that NewTurn, whether it was written)``, ``False`` when the session runs a turn
        already (nothing but the request's count is written then, nor when ``plan`` refuses);
        the caller commits either way."""
        reads = self._read(connection, query)
        new = plan(reads)
        if new is None:
            return None, False
        session = reads.session
        if session is None or session.id != new.turn.session_id:
            raise RuntimeError("a turn start's plan returned a turn of a session it did not read")
        return new, self._add_turn(connection, session=session, new=new)

    def _read(self, connection: Connection, query: TurnStartQuery) -> TurnStartReads:
        """The session row stays locked (``FOR UPDATE``) until the end."""
        count = None
        if query.count_key is not None and query.window_start is not None:
            [(count,)] = self._count.rows(connection, query.count_key, query.window_start)
        session = None
        if query.session_id:
            found = self._lock_session.rows(connection, query.session_id)
            if found and found[0][1] == query.tenant_id and found[0][-1] is None:  # not deleted
                session = _session(found[0])
        tokens = None
        history: list[Message] = []
        if session is not None:
            if query.tokens_since is not None:
                require_month_start(query.tokens_since)
                used = self._month_tokens.rows(connection, query.tenant_id, query.tokens_since)
                tokens = int(used[0][0]) if used else 0
            if query.history_limit and session.message_count:
                rows = self._history.rows(connection, session.id, query.history_limit)
                history = [_message(row) for row in reversed(rows)]
        return TurnStartReads(count, session, tokens, history)

    def _add_turn(self, connection: Connection, *, session: Session, new: NewTurn) -> bool:
        """The new turn's rows, the turn's first: ``False`` (and nothing written) when the
        session runs a turn already."""
        turn, user_message = new.turn, new.user_message
        stored = self._insert_turn.rows(
            connection,
            id=turn.id,
            session_id=turn.session_id,
            tenant_id=turn.tenant_id,
            status="running",
            mode=turn.mode,
            budget=turn.budget,
            user_message_id=user_message.id,
            assistant_message_id=None,
            tokens_in=turn.tokens_in,
            tokens_out=0,
            model=None,
            estimated=False,  # stored by ``finish_turn``
            error_code=None,
            first_seq=turn.first_seq,
            started_at=turn.started_at,
            finished_at=None,
            lease_expires_at=new.lease_until,
        )
        if not stored:
            return False
        self._insert_message.execute(connection, user_message, position=session.message_count)
        self._count_message.execute(
            connection, session.message_count + 1, user_message.created_at, session.id
        )
        self._outbox.add_billing(connection, new.events, at=turn.started_at)
        return True


class MessageInsert:
    """The insert of one message of a session at its position (a turn's question or reply)."""

    def __init__(self, dialect: Dialect) -> None:
        self._insert = RowInsert(MESSAGES, dialect)

    def execute(self, connection: Connection, message: Message, *, position: int) -> None:
        self._insert.execute(
            connection,
            id=message.id,
            session_id=message.session_id,
            tenant_id=message.tenant_id,
            turn_id=message.turn_id,
            position=position,
            role=message.role,
            content=message.content,
            tokens_in=message.tokens_in,
            tokens_out=message.tokens_out,
            model=message.model,
            created_at=message.created_at,
        )


def _session(row: Sequence[Any]) -> Session:
    """A row of ``_SESSION_COLUMNS`` as the ``Session`` it holds."""
    id_, tenant_id, title, agent_type, mode, status, messages, tokens, created, last, _ = row
    return Session(
        id=id_,
        tenant_id=tenant_id,
        title=title,
        agent_type=agent_type,
        mode=mode,
        status=status,
        message_count=messages,
        tokens_used=tokens,
        created_at=created,
        last_message_at=last,
    )


def _message(row: Sequence[Any]) -> Message:
    """A row of ``_MESSAGE_COLUMNS`` as the ``Message`` it holds."""
    id_, session_id, tenant_id, turn_id, role, content, tokens_in, tokens_out, model, at = row
    return Message(
        id=id_,
        session_id=session_id,
        tenant_id=tenant_id,
        turn_id=turn_id,
        role="assistant" if role == "assistant" else "user",
        content=content,
        tokens_in=tokens_in,
        tokens_out=tokens_out,
        model=model,
        created_at=at,
    )
