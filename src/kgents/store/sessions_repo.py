"""Sessions, messages and turns in SQL: implements ``kgents.sessions.ports.SessionStore``.

Each method is one transaction. Usage events are staged in the same transaction as the change
they bill, so a crash can never store one without the other.
"""

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import TypeVar, cast, get_args

from sqlalchemy import Select, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from kgents.errors import TurnInProgress, Unavailable
from kgents.records import (
    HistoryMessage,
    Message,
    Role,
    Session,
    Turn,
    TurnStatus,
    UsageEvent,
)
from kgents.sessions.ports import NewTurn, TurnPlan, TurnStartQuery
from kgents.store.group_commit import GroupCommit
from kgents.store.outbox_repo import add_outbox_events
from kgents.store.quota_sql import month_tokens_query
from kgents.store.schema import MessageRow, SessionRow, TurnRow
from kgents.store.sqlite_thread import WholeWrites
from kgents.store.turn_end_sql import TurnEndSql
from kgents.store.turn_start_sql import TurnStartSql
from kgents.store.unavailable import is_database_unavailable

logger = logging.getLogger(__name__)

FINISH_RETRY_SECONDS = 30.0
"""How long the end of a turn is retried while the database is unreachable (a restart)."""
_FINISH_RETRY_FIRST_SECONDS = 0.1
_FINISH_RETRY_MAX_SECONDS = 1.0

_TURN_STATUSES = frozenset(get_args(TurnStatus))
T = TypeVar("T")


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


def recent_messages_query(session_id: str, *, limit: int) -> Select[MessageRow]:
    """The last ``limit`` messages of a session, newest first."""
    return (
        select(MessageRow)
        .where(MessageRow.session_id == session_id)
        .order_by(MessageRow.position.desc())
        .limit(limit)
    )


# How SQLite and PostgreSQL name the unique index a concurrent turn start would run into (the
# one of running turns is the turn insert's ``ON CONFLICT`` target, so it never raises).
_CONCURRENT_TURN = (
    "ux_messages_session_position",
    "messages.session_id, messages.position",
)


class SqlSessionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._reads = async_sessionmaker(engine, expire_on_commit=False)
        # Turns start and end on a SQLite file's writer thread (``sqlite_thread``).
        self._whole_writes = WholeWrites(engine)
        self._writes = async_sessionmaker(self._whole_writes.writer, expire_on_commit=False)
        self._turn_sql = TurnStartSql(engine.dialect)
        self._end_sql = TurnEndSql(engine.dialect)
        self._first_seqs = GroupCommit(self._write_first_seqs)

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

    async def start_turn(self, query: TurnStartQuery, plan: TurnPlan) -> NewTurn | None:
        """See ``kgents.sessions.ports.SessionStore.start_turn``: read, ``plan`` and write are
        one step (``turn_start_sql``), run whole by ``WholeWrites``, so on a SQLite file the
        writer is held for one trip to its thread."""
        step = partial(self._turn_sql.start, query=query, plan=plan)
        try:
            new, written = await self._whole_writes.run(step)
        except IntegrityError as exc:
            if not any(name in str(exc) for name in _CONCURRENT_TURN):
                raise
            raise TurnInProgress("a turn is already running in this session") from exc
        if new is not None and not written:
            raise TurnInProgress("a turn is already running in this session")
        return new

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
        step = partial(
            self._end_sql.finish,
            turn=stored,
            assistant_message=assistant_message,
            events=events,
            retried=retried,
        )
        return stored if await self._whole_writes.run(step) else None

    async def set_first_seq(self, turn_id: str, seq: int) -> None:
        """Stored with the other turns' that start meanwhile (``group_commit``): a burst of
        turn starts then holds the writer for a few of these writes, not one each."""
        await self._first_seqs.add((turn_id, seq))

    async def _write_first_seqs(self, seqs: list[tuple[str, int]]) -> None:
        await self._whole_writes.run(partial(self._end_sql.set_first_seqs, seqs=seqs))

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
