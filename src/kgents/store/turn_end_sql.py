"""The turn end's one step at driver level, as the turn start's (``turn_start_sql``): statements
compiled once per dialect, no ORM, over a synchronous ``Connection``, so the step runs whole on
the SQLite writer's thread (``sqlite_thread``) and in ``AsyncConnection.run_sync`` (PostgreSQL).

The turn's conditional update decides who closes it. The session's counters are one update
whose ``RETURNING`` gives the reply's position (the session's ``message_count`` before it), so
the row is not read first; on PostgreSQL that update holds the row's lock until the commit, as
the ``FOR UPDATE`` read did.
"""

from collections.abc import Sequence

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection, Dialect

from kgents.clock import as_utc
from kgents.errors import NotFound
from kgents.records import Message, Turn, UsageEvent
from kgents.store.driver_sql import DriverStatement
from kgents.store.outbox_sql import OutboxSql
from kgents.store.quota_sql import add_month_tokens_statement
from kgents.store.schema import UTCDateTime
from kgents.store.turn_start_sql import SESSIONS, TURNS, MessageInsert
from kgents.tenancy.quota import month_bounds

_CLOSE_FIELDS = [
    "new_status",
    "new_assistant_message_id",
    "new_tokens_in",
    "new_tokens_out",
    "new_model",
    "new_estimated",
    "new_error_code",
    "new_finished_at",
]


class TurnEndSql:
    """The statements of ``SessionStore.finish_turn`` and ``set_first_seq`` for one dialect."""

    def __init__(self, dialect: Dialect) -> None:
        t = TURNS.c
        self._close = DriverStatement(
            update(TURNS)
            .where(t.id == bindparam("turn_id"), t.status == "running")
            .values({name.removeprefix("new_"): bindparam(name) for name in _CLOSE_FIELDS})
            .returning(t.id),
            dialect,
            [*_CLOSE_FIELDS, "turn_id"],
        )
        self._finished = DriverStatement(
            select(t.status, t.finished_at).where(t.id == bindparam("turn_id")),
            dialect,
            ["turn_id"],
        )
        s = SESSIONS.c
        self._count = DriverStatement(
            update(SESSIONS)
            .where(s.id == bindparam("session_id"))
            .values(
                message_count=s.message_count + bindparam("messages"),
                tokens_used=s.tokens_used + bindparam("tokens"),
                last_message_at=func.coalesce(
                    bindparam("at", type_=UTCDateTime()), s.last_message_at
                ),
            )
            .returning(s.message_count),
            dialect,
            ["messages", "tokens", "at", "session_id"],
        )
        self._month_tokens = DriverStatement(
            add_month_tokens_statement(dialect.name), dialect, ["tenant", "month_start", "tokens"]
        )
        self._insert_message = MessageInsert(dialect)
        self._outbox = OutboxSql(dialect)
        self._first_seq = DriverStatement(
            update(TURNS).where(t.id == bindparam("turn_id")).values(first_seq=bindparam("seq")),
            dialect,
            ["seq", "turn_id"],
        )

    def finish(
        self,
        connection: Connection,
        *,
        turn: Turn,
        assistant_message: Message | None,
        events: Sequence[UsageEvent],
        retried: bool,
    ) -> bool:
        """Close ``turn`` with its final state (its ``assistant_message_id`` set), reply and
        usage events: ``True``. ``False``, and nothing written, when it was not running, unless
        ``retried`` and it is stored as ``turn`` says: the commit of an earlier attempt landed
        although its connection died."""
        closed = self._close.rows(
            connection,
            turn.status,
            turn.assistant_message_id,
            turn.tokens_in,
            turn.tokens_out,
            turn.model,
            turn.estimated,
            turn.error_code,
            turn.finished_at,
            turn.id,
        )
        if not closed:
            return retried and self._finished_as(connection, turn)
        tokens = turn.tokens_in + turn.tokens_out
        counted = self._count.rows(
            connection,
            0 if assistant_message is None else 1,
            tokens,
            assistant_message.created_at if assistant_message else None,
            turn.session_id,
        )
        if not counted:  # sessions are only soft-deleted, so this means corruption
            raise NotFound("session of the turn not found")
        if tokens:
            month = month_bounds(turn.started_at)[0]
            self._month_tokens.execute(connection, turn.tenant_id, month, tokens)
        if assistant_message is not None:
            position = counted[0][0] - 1  # the session's count before the reply
            self._insert_message.execute(connection, assistant_message, position=position)
        self._outbox.add_billing(connection, events, at=turn.finished_at or turn.started_at)
        return True

    def _finished_as(self, connection: Connection, turn: Turn) -> bool:
        found = self._finished.rows(connection, turn.id)
        if not found:
            return False
        status, finished_at = found[0]
        return (
            status == turn.status
            and finished_at is not None
            and as_utc(finished_at) == turn.finished_at
        )

    def set_first_seqs(self, connection: Connection, *, seqs: Sequence[tuple[str, int]]) -> None:
        """Store the stream sequence of each turn's first event (its user message), given as
        ``(turn id, sequence)`` pairs, in one ``executemany``."""
        statement = self._first_seq
        connection.exec_driver_sql(
            statement.sql, [statement.params(seq, turn_id) for turn_id, seq in seqs]
        )
