"""Sessions, messages and turns in SQL: implements ``kgents.sessions.ports.SessionStore``.

Each method is one transaction. Usage events are staged in the same transaction as the change
they bill, so a crash can never store one without the other.
"""

import abc
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any, cast, get_args

from sqlalchemy import Select, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session as OrmSession

from kgents.clock import as_utc
from kgents.errors import NotFound, TurnInProgress, Unavailable
from kgents.records import (
    HistoryMessage,
    Message,
    Role,
    Session,
    Turn,
    TurnStatus,
    UsageEvent,
)
from kgents.sessions.ports import TurnStart, TurnStartReads
from kgents.store.engine import for_writes
from kgents.store.outbox_repo import add_outbox_events
from kgents.store.quota_sql import add_month_tokens_statement, month_tokens_query
from kgents.store.rate_limit_repo import request_count_statement
from kgents.store.schema import MessageRow, SessionRow, TurnRow
from kgents.store.sqlite_thread import ThreadTransaction, thread_transaction
from kgents.store.unavailable import is_database_unavailable

logger = logging.getLogger(__name__)

FINISH_RETRY_SECONDS = 30.0
"""How long the end of a turn is retried while the database is unreachable (a restart)."""
_FINISH_RETRY_FIRST_SECONDS = 0.1
_FINISH_RETRY_MAX_SECONDS = 1.0

_TURN_STATUSES = frozenset(get_args(TurnStatus))


def session_record(row: SessionRow) -> Session:
    return Session(
        id=row.id,
        tenant_id=row.tenant_id,
        title=row.title,
        agent_type=row.agent_type,
        mode=row.mode,
        status=row.status,
        message_count=row.message_count,
        tokens_used=row.tokens_used,
        created_at=row.created_at,
        last_message_at=row.last_message_at,
    )


def message_record(row: MessageRow) -> Message:
    role: Role = "assistant" if row.role == "assistant" else "user"
    return Message(
        id=row.id,
        session_id=row.session_id,
        tenant_id=row.tenant_id,
        turn_id=row.turn_id,
        role=role,
        content=row.content,
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
        model=row.model,
        created_at=row.created_at,
    )


def turn_status(value: str) -> TurnStatus:
    """A ``turns.status`` value as the ``TurnStatus`` it is (the column only holds those)."""
    if value not in _TURN_STATUSES:
        raise ValueError(f"unknown turn status {value!r}")
    return cast(TurnStatus, value)


def turn_record(row: TurnRow) -> Turn:
    status = turn_status(row.status)
    return Turn(
        id=row.id,
        session_id=row.session_id,
        tenant_id=row.tenant_id,
        status=status,
        mode=row.mode,
        budget=row.budget,
        user_message_id=row.user_message_id,
        assistant_message_id=row.assistant_message_id,
        tokens_in=row.tokens_in,
        tokens_out=row.tokens_out,
        model=row.model,
        estimated=row.estimated,
        error_code=row.error_code,
        first_seq=row.first_seq,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def _message_row(message: Message, position: int) -> MessageRow:
    return MessageRow(
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


def recent_messages_query(session_id: str, *, limit: int) -> Select[MessageRow]:
    """The last ``limit`` messages of a session, newest first."""
    return (
        select(MessageRow)
        .where(MessageRow.session_id == session_id)
        .order_by(MessageRow.position.desc())
        .limit(limit)
    )


# How SQLite and PostgreSQL name the unique indexes a concurrent turn start runs into.
_CONCURRENT_TURN = (
    "ux_turns_one_running",
    "turns.session_id",
    "ux_messages_session_position",
    "messages.session_id, messages.position",
)


class SqlSessionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._reads = async_sessionmaker(engine, expire_on_commit=False)
        self._writer = for_writes(engine)
        self._writes = async_sessionmaker(self._writer, expire_on_commit=False)
        self._dialect = engine.dialect.name
        # A SQLite file has a writer of its own (``for_writes``): turns start on its thread.
        self._thread_writes = self._writer is not engine and engine.dialect.name == "sqlite"

    async def add_session(self, session: Session, *, events: Sequence[UsageEvent]) -> None:
        async with self._writes.begin() as db:
            db.add(
                SessionRow(
                    id=session.id,
                    tenant_id=session.tenant_id,
                    title=session.title,
                    agent_type=session.agent_type,
                    mode=session.mode,
                    status=session.status,
                    message_count=0,
                    tokens_used=0,
                    created_at=session.created_at,
                    last_message_at=None,
                    deleted_at=None,
                )
            )
            add_outbox_events(db, events, at=session.created_at)

    async def list_sessions(
        self, tenant_id: str, *, limit: int, offset: int
    ) -> tuple[list[Session], int]:
        live = (SessionRow.tenant_id == tenant_id) & SessionRow.deleted_at.is_(None)
        async with self._reads() as db:
            total = await db.scalar(select(func.count()).select_from(SessionRow).where(live))
            rows = await db.scalars(
                select(SessionRow)
                .where(live)
                .order_by(SessionRow.created_at.desc(), SessionRow.id.desc())
                .limit(limit)
                .offset(offset)
            )
            return [session_record(row) for row in rows], total or 0

    async def get_session(self, tenant_id: str, session_id: str) -> Session | None:
        async with self._reads() as db:
            row = await db.get(SessionRow, session_id)
            if row is None or row.tenant_id != tenant_id or row.deleted_at is not None:
                return None
            return session_record(row)

    async def delete_session(self, tenant_id: str, session_id: str, *, at: datetime) -> bool:
        """Soft-delete: the session disappears from the API; its turns stay for billing."""
        async with self._writes.begin() as db:
            result = await db.execute(
                update(SessionRow)
                .where(
                    SessionRow.id == session_id,
                    SessionRow.tenant_id == tenant_id,
                    SessionRow.deleted_at.is_(None),
                )
                .values(deleted_at=at, status="deleted")
            )
            return bool(getattr(result, "rowcount", 0))

    @contextlib.asynccontextmanager
    async def begin_turn(self) -> AsyncIterator[TurnStart]:
        """One write transaction to start a turn in (see ``kgents.sessions.ports.TurnStart``).

        Commits when the block ends normally, else rolls everything back; ``TurnInProgress``
        when the unique indexes on running turns or message positions refuse the turn (a
        concurrent start won). On a SQLite file, each of its two steps is one trip to the
        connection's thread (``sqlite_thread``)."""
        try:
            if self._thread_writes:
                async with thread_transaction(self._writer) as transaction:
                    on_thread = _ThreadTurnStart(transaction)
                    yield on_thread
                    await transaction.commit(on_thread.staged)
            else:
                async with self._writes.begin() as db:
                    yield _OrmTurnStart(db)
        except IntegrityError as exc:
            if not any(name in str(exc) for name in _CONCURRENT_TURN):
                raise
            raise TurnInProgress("a turn is already running in this session") from exc

    async def finish_turn(
        self,
        turn: Turn,
        *,
        assistant_message: Message | None,
        events: Sequence[UsageEvent],
    ) -> Turn | None:
        """Close a running turn with its final state, reply and usage events, all at once.

        Returns ``None`` (and changes nothing) when the turn was no longer running: whoever
        closes a turn first wins, so a turn is never finished, or billed, twice.

        A turn's reply must not be lost to a database restart: while the database is
        unreachable the write is tried again, on a fresh connection, for up to
        ``FINISH_RETRY_SECONDS``. An attempt whose commit landed although its connection died
        is recognised by the turn's own end time, so the turn still counts once.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FINISH_RETRY_SECONDS
        delay = _FINISH_RETRY_FIRST_SECONDS
        retried = False
        while True:
            try:
                return await self._finish_once(
                    turn, assistant_message=assistant_message, events=events, retried=retried
                )
            except Unavailable as exc:
                if not is_database_unavailable(exc) or loop.time() + delay > deadline:
                    raise
                logger.warning("storing the end of turn %s: %s; retrying", turn.id, exc.message)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _FINISH_RETRY_MAX_SECONDS)
            retried = True

    async def _finish_once(
        self,
        turn: Turn,
        *,
        assistant_message: Message | None,
        events: Sequence[UsageEvent],
        retried: bool,
    ) -> Turn | None:
        stored = replace(
            turn, assistant_message_id=assistant_message.id if assistant_message else None
        )
        async with self._writes.begin() as db:
            result = await db.execute(
                update(TurnRow)
                .where(TurnRow.id == turn.id, TurnRow.status == "running")
                .values(
                    status=turn.status,
                    tokens_in=turn.tokens_in,
                    tokens_out=turn.tokens_out,
                    model=turn.model,
                    estimated=turn.estimated,
                    error_code=turn.error_code,
                    assistant_message_id=stored.assistant_message_id,
                    finished_at=turn.finished_at,
                )
            )
            if not getattr(result, "rowcount", 0):
                if retried and await self._finished_as(db, turn):
                    return stored  # the commit of an attempt that "failed" did land
                return None
            session = await db.get(SessionRow, turn.session_id, with_for_update=True)
            if session is None:  # sessions are only soft-deleted, so this means corruption
                raise NotFound("session of the turn not found")
            tokens = turn.tokens_in + turn.tokens_out
            session.tokens_used += tokens
            if tokens:
                await db.execute(
                    add_month_tokens_statement(
                        self._dialect, turn.tenant_id, started_at=turn.started_at, tokens=tokens
                    )
                )
            if assistant_message is not None:
                db.add(_message_row(assistant_message, session.message_count))
                session.message_count += 1
                session.last_message_at = assistant_message.created_at
            add_outbox_events(db, events, at=turn.finished_at or turn.started_at)
            return stored

    @staticmethod
    async def _finished_as(db: AsyncSession, turn: Turn) -> bool:
        row = await db.get(TurnRow, turn.id)
        return (
            row is not None
            and row.status == turn.status
            and row.finished_at is not None
            and as_utc(row.finished_at) == turn.finished_at
        )

    async def set_first_seq(self, turn_id: str, seq: int) -> None:
        async with self._writes.begin() as db:
            await db.execute(update(TurnRow).where(TurnRow.id == turn_id).values(first_seq=seq))

    async def renew_leases(self, turn_ids: Sequence[str], *, until: datetime) -> None:
        if not turn_ids:
            return
        async with self._writes.begin() as db:
            await db.execute(
                update(TurnRow)
                .where(TurnRow.id.in_(turn_ids), TurnRow.status == "running")
                .values(lease_expires_at=until)
            )

    async def expired_turns(self, *, now: datetime) -> Sequence[Turn]:
        """Running turns whose lease ran out: their process died."""
        async with self._reads() as db:
            rows = await db.scalars(
                select(TurnRow)
                .where(TurnRow.status == "running", TurnRow.lease_expires_at < now)
                .order_by(TurnRow.started_at)
            )
            return [turn_record(row) for row in rows]

    async def tokens_by_tenant(self) -> dict[str, tuple[int, int]]:
        """(tokens in, tokens out) of every finished turn, per tenant (for reconciliation)."""
        async with self._reads() as db:
            rows = await db.execute(
                select(
                    TurnRow.tenant_id,
                    func.coalesce(func.sum(TurnRow.tokens_in), 0),
                    func.coalesce(func.sum(TurnRow.tokens_out), 0),
                )
                .where(TurnRow.status != "running")
                .group_by(TurnRow.tenant_id)
            )
            return {tenant: (int(tin), int(tout)) for tenant, tin, tout in rows}

    async def tokens_used(self, tenant_id: str, *, since: datetime) -> int:
        """Tokens in and out of the tenant's finished turns started in the calendar month
        that ``since`` begins (one row of ``tenant_month_tokens``)."""
        async with self._reads() as db:
            total = await db.scalar(month_tokens_query(tenant_id, month_start=since))
            return int(total or 0)

    async def get_turn(self, tenant_id: str, turn_id: str) -> Turn | None:
        async with self._reads() as db:
            row = await db.get(TurnRow, turn_id)
            if row is None or row.tenant_id != tenant_id:
                return None
            return turn_record(row)

    async def running_turns(self, *, session_id: str | None = None) -> Sequence[Turn]:
        query = select(TurnRow).where(TurnRow.status == "running")
        if session_id is not None:
            query = query.where(TurnRow.session_id == session_id)
        async with self._reads() as db:
            return [turn_record(row) for row in await db.scalars(query.order_by(TurnRow.id))]

    async def recent_messages(self, session_id: str, *, limit: int) -> list[Message]:
        """The last ``limit`` messages of a session, oldest first."""
        async with self._reads() as db:
            rows = await db.scalars(recent_messages_query(session_id, limit=limit))
            return [message_record(row) for row in reversed(rows.all())]

    async def list_messages(
        self, session_id: str, *, limit: int, offset: int
    ) -> tuple[list[HistoryMessage], int]:
        async with self._reads() as db:
            total = await db.scalar(
                select(func.count())
                .select_from(MessageRow)
                .where(MessageRow.session_id == session_id)
            )
            rows = await db.execute(
                select(MessageRow, TurnRow.status, TurnRow.error_code)
                .outerjoin(TurnRow, TurnRow.id == MessageRow.turn_id)
                .where(MessageRow.session_id == session_id)
                .order_by(MessageRow.position)
                .limit(limit)
                .offset(offset)
            )
            history = [
                HistoryMessage(
                    message=message_record(row),
                    turn_status=turn_status(status) if status is not None else None,
                    error_code=error_code,
                )
                for row, status, error_code in rows
            ]
            return history, total or 0


def _read_turn_start(
    db: OrmSession,
    *,
    tenant_id: str,
    session_id: str | None,
    count_key: str | None,
    window_start: datetime | None,
    tokens_since: datetime | None,
    history_limit: int,
) -> tuple[TurnStartReads, SessionRow | None]:
    """``TurnStart.read`` on a synchronous session (which keeps the session row for staging)."""
    count = None
    if count_key is not None and window_start is not None:
        statement = request_count_statement(db.get_bind().dialect.name, count_key, window_start)
        count = int(db.scalar(statement) or 0)
    row = db.get(SessionRow, session_id, with_for_update=True) if session_id else None
    if row is not None and (row.tenant_id != tenant_id or row.deleted_at is not None):
        row = None
    running = False
    history: list[Message] = []
    tokens = None
    if row is not None:
        running = (
            db.scalar(
                select(TurnRow.id)
                .where(TurnRow.session_id == row.id, TurnRow.status == "running")
                .limit(1)
            )
            is not None
        )
        if tokens_since is not None:
            tokens = int(db.scalar(month_tokens_query(tenant_id, month_start=tokens_since)) or 0)
        if history_limit:
            rows = db.scalars(recent_messages_query(row.id, limit=history_limit)).all()
            history = [message_record(message) for message in reversed(rows)]
    session = session_record(row) if row is not None else None
    return TurnStartReads(count, session, running, tokens, history), row


def _stage_turn(
    db: OrmSession,
    session: SessionRow,
    turn: Turn,
    *,
    user_message: Message,
    events: Sequence[UsageEvent],
    lease_until: datetime,
) -> None:
    """``TurnStart.add_turn`` on a synchronous session: the rows, written at the flush."""
    db.add(_message_row(user_message, session.message_count))
    session.message_count += 1
    session.last_message_at = user_message.created_at
    db.add(
        TurnRow(
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
            estimated=False,
            error_code=None,
            first_seq=turn.first_seq,
            started_at=turn.started_at,
            finished_at=None,
            lease_expires_at=lease_until,
        )
    )
    add_outbox_events(db, events, at=turn.started_at)


class _StagedTurn(abc.ABC):
    """``TurnStart``'s ``add_turn``: what it was given, checked against what ``read`` found,
    becomes one step over a synchronous session, which the subclass runs (``_take``)."""

    def __init__(self) -> None:
        self.row: SessionRow | None = None

    def add_turn(
        self,
        turn: Turn,
        *,
        user_message: Message,
        events: Sequence[UsageEvent],
        lease_until: datetime,
    ) -> None:
        row = self.row
        if row is None or row.id != turn.session_id:
            raise RuntimeError("add_turn needs the turn's session, found by read() first")
        self._take(
            partial(
                _stage_turn,
                session=row,
                turn=turn,
                user_message=user_message,
                events=events,
                lease_until=lease_until,
            )
        )

    @abc.abstractmethod
    def _take(self, step: Callable[[OrmSession], None]) -> None:
        """Run ``step`` now, or keep it for the commit (each subclass's transaction decides)."""


class _OrmTurnStart(_StagedTurn):
    """``TurnStart`` on an ``AsyncSession`` transaction (PostgreSQL; SQLite in memory)."""

    def __init__(self, db: AsyncSession) -> None:
        super().__init__()
        self._db = db

    async def read(self, **query: Any) -> TurnStartReads:
        reads, self.row = await self._db.run_sync(partial(_read_turn_start, **query))
        return reads

    def _take(self, step: Callable[[OrmSession], None]) -> None:
        # Only adds objects to the session (no I/O): the commit flushes them.
        step(self._db.sync_session)


class _ThreadTurnStart(_StagedTurn):
    """``TurnStart`` on a SQLite ``ThreadTransaction``: ``read`` is one trip, and what
    ``add_turn`` stages is written with the commit, in a second one."""

    def __init__(self, transaction: ThreadTransaction) -> None:
        super().__init__()
        self._transaction = transaction
        self.staged: Callable[[OrmSession], None] | None = None

    async def read(self, **query: Any) -> TurnStartReads:
        reads, self.row = await self._transaction.run(partial(_read_turn_start, **query))
        return reads

    def _take(self, step: Callable[[OrmSession], None]) -> None:
        self.staged = step
