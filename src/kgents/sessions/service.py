"""Sessions and their turns: the service the API and the CLI call."""

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from kgents.clock import utc_now
from kgents.config import Budget
from kgents.errors import (
    BudgetNotAllowed,
    Conflict,
    InvalidInput,
    KgentsError,
    NotFound,
)
from kgents.ids import is_valid_id, new_id
from kgents.llm.base import GenerationRequest, estimate_request_tokens, estimate_tokens
from kgents.metering import events as usage_events
from kgents.records import HistoryMessage, Message, Session, Turn, UsageEvent
from kgents.sessions.generation import PlannedTurn
from kgents.sessions.persona import (
    MAX_TOKENS_BY_BUDGET,
    MODES,
    TEMPERATURE_BY_MODE,
    budget_allows,
    default_budget,
    history_that_fits,
    system_prompt,
)
from kgents.sessions.ports import NewTurn, SessionStore, TurnStartQuery, TurnStartReads
from kgents.tenancy.quota import month_bounds, quota_status, require_tokens_left
from kgents.tenancy.rate_limit import RateCharge, window_of
from kgents.tenancy.service import Principal

HISTORY_WINDOW = 200  # messages read from the store before trimming to the budget


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """``budget`` ``None``: the plan's highest, up to ``dialogue`` (``default_budget``)."""

    message: str
    mode: str | None
    budget: Budget | None


@dataclass(frozen=True, slots=True)
class HistoryPage:
    messages: list[HistoryMessage]
    total: int
    running_turn: Turn | None


class SessionService:
    def __init__(
        self,
        *,
        store: SessionStore,
        max_message_chars: int,
        turn_lease: timedelta,
    ) -> None:
        self._store = store
        self._max_message_chars = max_message_chars
        self._turn_lease = turn_lease

    async def create_session(
        self, *, tenant_id: str, title: str | None, agent_type: str, mode: str
    ) -> Session:
        _check_mode(mode)
        now = utc_now()
        session = Session(
            id=new_id("ses"),
            tenant_id=tenant_id,
            title=title,
            agent_type=agent_type,
            mode=mode,
            status="active",
            message_count=0,
            tokens_used=0,
            created_at=now,
            last_message_at=None,
        )
        event = usage_events.session_create(
            tenant_id=tenant_id, session_id=session.id, agent_type=agent_type, at=now
        )
        await self._store.add_session(session, events=[event])
        return session

    async def list_sessions(
        self, *, tenant_id: str, limit: int, offset: int
    ) -> tuple[list[Session], int]:
        return await self._store.list_sessions(tenant_id, limit=limit, offset=offset)

    async def get_session(self, *, tenant_id: str, session_id: str) -> Session:
        """The tenant's session; another tenant's session is ``NotFound`` exactly like none."""
        session = (
            await self._store.get_session(tenant_id, session_id)
            if is_valid_id(session_id)
            else None
        )
        if session is None:
            raise NotFound("session not found")
        return session

    async def delete_session(self, *, tenant_id: str, session_id: str) -> None:
        await self.get_session(tenant_id=tenant_id, session_id=session_id)
        if not await self._store.delete_session(tenant_id, session_id, at=utc_now()):
            raise NotFound("session not found")

    async def list_messages(
        self, *, tenant_id: str, session_id: str, limit: int, offset: int
    ) -> HistoryPage:
        """A page of the history, each message with its turn's status and error code, and
        the turn running now."""
        await self.get_session(tenant_id=tenant_id, session_id=session_id)
        messages, total = await self._store.list_messages(session_id, limit=limit, offset=offset)
        running = await self._store.running_turns(session_id=session_id)
        return HistoryPage(
            messages=messages, total=total, running_turn=running[0] if running else None
        )

    async def get_turn(self, *, tenant_id: str, turn_id: str) -> Turn:
        turn = await self._store.get_turn(tenant_id, turn_id) if is_valid_id(turn_id) else None
        if turn is None:
            raise NotFound("turn not found")
        return turn

    async def running_turn(self, *, tenant_id: str, session_id: str) -> Turn:
        """The session's running turn; ``Conflict`` (409) when none is running."""
        await self.get_session(tenant_id=tenant_id, session_id=session_id)
        running = await self._store.running_turns(session_id=session_id)
        if not running:
            raise Conflict("no turn is running in this session", code="no_turn_running")
        return running[0]

    async def start_turn(
        self,
        *,
        principal: Principal,
        session_id: str,
        request: TurnRequest,
        rate: RateCharge | None = None,
        request_events: Sequence[UsageEvent] = (),
    ) -> tuple[PlannedTurn, Message]:
        """Store the user message and a running turn; return what the generation must do.

        One transaction (DESIGN, flow step 2) counts the request against its key's rate limit
        (``rate``, when the caller has not counted it yet), checks the session and the token
        quota, and stores the user message, the turn and the usage events: ``session.message``
        and ``request_events`` (the request's ``api.request``); the store refuses the turn
        when one is running (the last check). The checks run inside the store's one step
        (``plan``, see ``SessionStore.start_turn``), so the start is a single trip to the
        database.

        Raises ``RateLimitExceeded``, ``InvalidInput``, ``BudgetNotAllowed``, ``NotFound``,
        ``QuotaExceeded`` or ``TurnInProgress``; a refused turn stores nothing but the
        request's count, which still counts.
        """
        tenant_id = principal.tenant.id
        now = utc_now()
        budget = request.budget or default_budget(principal.plan.max_budget)
        max_tokens = MAX_TOKENS_BY_BUDGET[budget]
        query = TurnStartQuery(
            tenant_id=tenant_id,
            session_id=session_id if is_valid_id(session_id) else None,
            count_key=rate.key_id if rate else None,
            window_start=window_of(now) if rate else None,
            tokens_since=month_bounds(now)[0],  # dormant turns count against it too
            history_limit=HISTORY_WINDOW if max_tokens else 0,
        )
        decided: list[tuple[PlannedTurn, Message] | KgentsError] = []

        def plan(reads: TurnStartReads) -> NewTurn | None:
            # Runs in the store's transaction, maybe on its connection's thread: pure work.
            try:
                if rate is not None and reads.request_count is not None:
                    rate.settle(count=reads.request_count, now=now)
                planned, user_message, event = self._plan_turn(
                    reads,
                    principal=principal,
                    session_id=session_id,
                    request=request,
                    budget=budget,
                    now=now,
                )
            except KgentsError as exc:
                decided.append(exc)  # raised once the request's count is committed
                return None
            decided.append((planned, user_message))
            return NewTurn(
                turn=planned.turn,
                user_message=user_message,
                events=[event, *request_events],
                lease_until=now + self._turn_lease,
            )

        await self._store.start_turn(query, plan)
        [outcome] = decided
        if isinstance(outcome, KgentsError):
            raise outcome
        return outcome

    def _plan_turn(
        self,
        reads: TurnStartReads,
        *,
        principal: Principal,
        session_id: str,
        request: TurnRequest,
        budget: Budget,
        now: datetime,
    ) -> tuple[PlannedTurn, Message, UsageEvent]:
        """Check the turn against what was read (raising the refusal) and build its rows.
        Pure and quick: it runs inside the store's transaction, maybe off the loop's thread."""
        tenant_id = principal.tenant.id
        if len(request.message) > self._max_message_chars:
            raise InvalidInput(
                f"message is longer than {self._max_message_chars} characters",
                code="message_too_long",
            )
        if not request.message.strip():
            raise InvalidInput("message is empty", code="message_empty")
        if not budget_allows(budget, principal.plan.max_budget):
            raise BudgetNotAllowed(
                f"budget {budget.value!r} is not included in plan "
                f"{principal.tenant.plan!r} (highest: {principal.plan.max_budget.value!r})"
            )
        session = reads.session
        if session is None:
            raise NotFound("session not found")
        if reads.tokens_used is not None:
            require_tokens_left(quota_status(plan=principal.plan, used=reads.tokens_used, at=now))
        mode = request.mode or session.mode
        _check_mode(mode)

        turn_id = new_id("turn")
        user_message = Message(
            id=new_id("msg"),
            session_id=session_id,
            tenant_id=tenant_id,
            turn_id=turn_id,
            role="user",
            content=request.message,
            tokens_in=0,
            tokens_out=0,
            model=None,
            created_at=now,
        )
        turn = Turn(
            id=turn_id,
            session_id=session_id,
            tenant_id=tenant_id,
            status="running",
            mode=mode,
            budget=budget.value,
            user_message_id=user_message.id,
            assistant_message_id=None,
            tokens_in=0,
            tokens_out=0,
            model=None,
            estimated=False,
            error_code=None,
            first_seq=None,
            started_at=now,
            finished_at=None,
        )
        generation = _generation_request(reads.history, request.message, mode, budget)
        if generation is not None:
            # Stored now, so a turn whose process dies can still be billed for its prompt.
            turn = replace(turn, tokens_in=estimate_request_tokens(generation))
        else:
            # Dormant: no model call, but the message is stored (database and event stream),
            # so its estimated tokens count as input against the plan's token quota.
            turn = replace(turn, tokens_in=estimate_tokens(request.message), estimated=True)
        event = usage_events.session_message(
            tenant_id=tenant_id,
            session_id=session_id,
            turn_id=turn_id,
            message_length=len(request.message),
            at=now,
        )
        return PlannedTurn(turn=turn, request=generation), user_message, event


def _generation_request(
    history: list[Message], message: str, mode: str, budget: Budget
) -> GenerationRequest | None:
    max_tokens = MAX_TOKENS_BY_BUDGET[budget]
    if max_tokens == 0:
        return None
    return GenerationRequest(
        system=system_prompt(mode),
        messages=history_that_fits(history, message, budget_tokens=max_tokens),
        temperature=TEMPERATURE_BY_MODE[mode],
        max_tokens=max_tokens,
    )


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise InvalidInput(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
