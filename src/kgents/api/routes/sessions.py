"""Sessions, messages, streaming replies, resume and cancel (tenant API key)."""

import asyncio
import contextlib
import re
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse, StreamingResponse

from kgents.api.deps import GenerationDep, PlatformDep, SessionsDep, UncountedSessionsDep
from kgents.api.schemas import (
    MAX_OFFSET,
    ErrorBody,
    MessageCreate,
    MessagePublic,
    MessagesPublic,
    RunningTurnPublic,
    SessionCreate,
    SessionPublic,
    SessionsPublic,
    TurnCancelled,
)
from kgents.api.sse import sse_frames, sse_response
from kgents.api.usage_middleware import mark_usage_recorded, request_usage_event
from kgents.api.watched_follower import WatchedFollower
from kgents.errors import Conflict, EventsUnavailable, InvalidInput, InvalidResumePoint
from kgents.sessions.generation import error_event
from kgents.sessions.origin import OriginFollower
from kgents.sessions.ports import SessionEvent
from kgents.sessions.service import TurnRequest
from kgents.tenancy.rate_limit import RateCharge
from kgents.tenancy.streams import StreamSlot

router = APIRouter(prefix="/v1/kgent/sessions", tags=["sessions"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, invalid, revoked or expired API key"},
    403: {
        "model": ErrorBody,
        "description": "Tenant suspended, or no 'sessions' scope on the key (scope_missing)",
    },
    404: {"model": ErrorBody, "description": "No such session for this tenant"},
    422: {"model": ErrorBody, "description": "Invalid request"},
}
_TURN_ERRORS: dict[int | str, dict[str, Any]] = {
    **_ERRORS,
    402: {"model": ErrorBody, "description": "Token quota of the plan exhausted"},
    403: {"model": ErrorBody, "description": "Budget not included in the plan"},
    409: {"model": ErrorBody, "description": "A turn is already running in this session"},
    413: {"model": ErrorBody, "description": "Request body too large"},
    429: {"model": ErrorBody, "description": "Rate limit of the API key exceeded"},
    502: {"model": ErrorBody, "description": "The LLM provider refused the request"},
    503: {
        "model": ErrorBody,
        "description": "LLM provider, event stream (NATS) or database unavailable",
    },
}
_EVENTS_DOWN: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorBody, "description": "Event stream (NATS) or database unavailable"},
}
MAX_RESUME_POINT = 2**63 - 1
"""The largest stream sequence a client may resume after (JetStream's are unsigned 64-bit,
and ``after + 1`` must be one)."""
RECONNECT_GRACE_SECONDS = 2.0
"""How long a new turn waits for NATS when the connection is down (a reconnect takes well
under a second) before it is refused with 503."""
_SEQUENCE = re.compile(r"[0-9]{1,19}")  # ASCII digits only: str.isdigit() also takes "²"


def resume_point(value: str, *, name: str) -> int:
    """The stream sequence in ``value``; ``InvalidResumePoint`` (400) unless it is plain
    digits from 0 to ``MAX_RESUME_POINT``."""
    if _SEQUENCE.fullmatch(value) is None or int(value) > MAX_RESUME_POINT:
        raise InvalidResumePoint(
            f"{name} must be a stream sequence number from 0 to {MAX_RESUME_POINT}"
        )
    return int(value)


_SSE: dict[str, Any] = {
    "description": (
        "Server-Sent Events: `id:` is the stream sequence (resume with `Last-Event-ID`), "
        "`event:` the event type, `data:` its JSON; `:` comments are heartbeats"
    ),
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


@router.post("", status_code=status.HTTP_201_CREATED, responses=_ERRORS)
async def create_session(
    principal: SessionsDep, platform: PlatformDep, body: SessionCreate | None = None
) -> SessionPublic:
    """Create a session; no body at all is the same as ``{}``."""
    body = body or SessionCreate()
    session = await platform.sessions.create_session(
        tenant_id=principal.tenant.id, title=body.title, agent_type=body.agent_type, mode=body.mode
    )
    return SessionPublic.of(session)


@router.get("", responses=_ERRORS)
async def list_sessions(
    principal: SessionsDep,
    platform: PlatformDep,
    limit: int = Query(default=20, ge=1, le=100),
    offset: int = Query(default=0, ge=0, le=MAX_OFFSET),
) -> SessionsPublic:
    sessions, total = await platform.sessions.list_sessions(
        tenant_id=principal.tenant.id, limit=limit, offset=offset
    )
    return SessionsPublic(sessions=[SessionPublic.of(s) for s in sessions], total=total)


@router.get("/{session_id}", responses=_ERRORS)
async def get_session(
    session_id: str, principal: SessionsDep, platform: PlatformDep
) -> SessionPublic:
    session = await platform.sessions.get_session(
        tenant_id=principal.tenant.id, session_id=session_id
    )
    return SessionPublic.of(session)


@router.delete("/{session_id}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
async def delete_session(
    session_id: str, principal: SessionsDep, platform: PlatformDep
) -> Response:
    await platform.sessions.delete_session(tenant_id=principal.tenant.id, session_id=session_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{session_id}/messages", responses=_ERRORS)
async def list_messages(
    session_id: str,
    principal: SessionsDep,
    platform: PlatformDep,
    limit: int = Query(default=50, ge=1, le=500),
    offset: int = Query(default=0, ge=0, le=MAX_OFFSET),
) -> MessagesPublic:
    """A page of the conversation, each message with how its turn ended, and the turn
    running now (to follow its reply from its start)."""
    page = await platform.sessions.list_messages(
        tenant_id=principal.tenant.id, session_id=session_id, limit=limit, offset=offset
    )
    running = page.running_turn
    return MessagesPublic(
        messages=[MessagePublic.of_history(m) for m in page.messages],
        total=page.total,
        session_id=session_id,
        running_turn=RunningTurnPublic.of(running) if running else None,
    )


@router.post(
    "/{session_id}/messages",
    status_code=status.HTTP_201_CREATED,
    response_model=MessagePublic,
    responses={**_TURN_ERRORS, 200: _SSE},
)
async def send_message(
    session_id: str,
    body: MessageCreate,
    request: Request,
    principal: UncountedSessionsDep,
    platform: PlatformDep,
    generation: GenerationDep,
) -> Response:
    """Send a message. ``stream=true`` answers with SSE events (``user_message``, ``chunk``…,
    then ``complete`` or ``error``); ``stream=false`` waits and answers the assistant message."""
    if not await generation.events.wait_connected(RECONNECT_GRACE_SECONDS):
        # Refuse before storing anything: a turn must be able to publish its events. A client
        # moving to another NATS server (a rolling upgrade) is waited for, briefly.
        raise EventsUnavailable("the event stream is unavailable; try again shortly")
    # The request is counted against the key's rate limit in the turn's own transaction, and
    # a streamed reply's api.request (200 once the turn is stored) is stored in it too.
    rate = RateCharge(key_id=principal.key.id, limit=principal.plan.requests_per_minute)
    request_events = []
    origin: OriginFollower | None = None
    # A streamed reply holds one of the key's stream slots (429 before anything is stored).
    slot = platform.streams.acquire(principal) if body.stream else None
    if body.stream:
        request_events.append(
            request_usage_event(request.scope, tenant_id=principal.tenant.id, status_code=200)
        )
        # The reply is served in process: the generation task hands each event to it as soon
        # as JetStream acknowledged it (a client that falls behind reads JetStream instead).
        origin = OriginFollower(
            events=generation.events,
            session_id=session_id,
            limit=platform.settings.stream_buffer_size,
        )
    try:
        planned, user_message = await platform.sessions.start_turn(
            principal=principal,
            session_id=session_id,
            request=TurnRequest(message=body.message, mode=body.mode, budget=body.budget),
            rate=rate,
            request_events=request_events,
        )
        if request_events:
            mark_usage_recorded(request.scope)
        listener = origin.offer if origin is not None else None
        first_seq, task = await generation.supervisor.launch(planned, user_message, listener)
    except BaseException:
        if slot is not None:
            slot.release()
        raise
    finally:
        request.state.rate_status = rate.status
    if origin is None or slot is None:  # not streamed (the two go together)
        # Shielded: a client that goes away does not stop the generation; it is still stored.
        outcome = await asyncio.shield(task)
        if outcome.error is not None:
            raise outcome.error
        if outcome.message is None:
            raise Conflict("the turn ended without a reply", code="empty_reply")
        return JSONResponse(
            MessagePublic.of(
                outcome.message, status=outcome.turn.status, error_code=outcome.turn.error_code
            ).model_dump(mode="json"),
            status_code=status.HTTP_201_CREATED,
        )
    turn_id = planned.turn.id

    def turn_ended(event: SessionEvent) -> bool:
        return event.type in ("complete", "error") and event.data.get("turn_id") == turn_id

    async def end_of_turn() -> SessionEvent | None:
        try:
            outcome = await asyncio.shield(task)
            # In the stream: the follower delivers it, after every chunk (however long a
            # failover delays it); else it is sent from here.
            return None if outcome.end_seq is not None else outcome.end_event()
        except Exception:
            # The turn could not be stored (database down): the lease recovery closes it later.
            return error_event(
                planned.turn, code="turn_failed", message="the turn could not be stored"
            )

    frames = sse_frames(
        WatchedFollower(origin, platform.tenancy.watch(principal)),
        request=request,
        first_seq=first_seq,
        stop_when=turn_ended,
        turn_end=asyncio.ensure_future(end_of_turn()),
    )
    return sse_response(origin, frames, slot=slot)


@contextlib.contextmanager
def _released_on_error(slot: StreamSlot) -> Iterator[None]:
    """Give ``slot`` back if the block fails: the stream it was taken for never opens."""
    try:
        yield
    except BaseException:
        slot.release()
        raise


@router.get(
    "/{session_id}/events",
    response_class=StreamingResponse,  # the 200 is text/event-stream only, not JSON
    responses={**_ERRORS, **_EVENTS_DOWN, 200: _SSE},
)
async def follow_events(
    session_id: str,
    request: Request,
    principal: SessionsDep,
    platform: PlatformDep,
    generation: GenerationDep,
    after: str | None = Query(
        default=None, description="Replay events after this stream sequence (digits)"
    ),
    from_: str | None = Query(default=None, alias="from", description="'start' replays all"),
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Follow a session's events live; resume with ``Last-Event-ID`` or ``?after=<seq>``.

    A resume point past the end of the stream follows from the end (new events only)."""
    after_seq = None
    if last_event_id is not None:
        after_seq = resume_point(last_event_id, name="Last-Event-ID")
    elif after is not None:
        after_seq = resume_point(after, name="after")
    await platform.sessions.get_session(tenant_id=principal.tenant.id, session_id=session_id)
    if from_ not in (None, "start"):
        raise InvalidInput("from must be 'start'")
    slot = platform.streams.acquire(principal)
    with _released_on_error(slot):
        follower = await generation.events.open_follower(
            session_id, after_seq=after_seq, from_start=from_ == "start" and after_seq is None
        )
    watched = WatchedFollower(follower, platform.tenancy.watch(principal))
    return sse_response(follower, sse_frames(watched, request=request), slot=slot)


@router.post(
    "/{session_id}/cancel",
    responses={
        **_ERRORS,
        **_EVENTS_DOWN,
        409: {"model": ErrorBody, "description": "No turn is running in this session"},
    },
)
async def cancel_turn(
    session_id: str, principal: SessionsDep, platform: PlatformDep, generation: GenerationDep
) -> TurnCancelled:
    """Stop the running turn of the session; it is stored as ``cancelled`` with its text so far."""
    turn = await platform.sessions.running_turn(
        tenant_id=principal.tenant.id, session_id=session_id
    )
    if not generation.supervisor.cancel(session_id):
        await generation.events.request_cancel(session_id)
    return TurnCancelled(session_id=session_id, turn_id=turn.id, status="cancelling")
