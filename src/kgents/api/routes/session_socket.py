"""``GET /v1/kgent/sessions/{id}/ws``: one duplex connection to a session.

The client sends ``{"type": "message", ...}`` (the body of ``POST .../messages``) and
``{"type": "cancel"}``; the server sends each session event as one text frame
``{"id": <stream sequence>, "event": ..., "data": ...}``. An error is a frame
``{"event": "error", "data": {"error": {...}}}`` and then a close whose code is 4000 + the
HTTP status of the same error (4401, 4404, 4429...). The same parts as the SSE routes serve it:
authentication, rate limit, stream slot, access watch, follower, turn start.
"""

import asyncio
import contextlib
import json
import logging
from typing import Any

import orjson
import pydantic
from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from kgents.api.errors import status_for
from kgents.api.routes.sessions import resume_point
from kgents.api.schemas import MessageCreate
from kgents.api.sse import error_body_of
from kgents.api.watched_follower import WatchedFollower
from kgents.clock import utc_now
from kgents.errors import (
    EventsUnavailable,
    InvalidInput,
    KgentsError,
    Unauthenticated,
)
from kgents.metering import events as usage_events
from kgents.platform import Generation, Platform
from kgents.sessions.service import TurnRequest
from kgents.tenancy.rate_limit import RateCharge
from kgents.tenancy.service import Principal

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/kgent/sessions", tags=["sessions"])
SOCKET_PATH = "/v1/kgent/sessions/{session_id}/ws"
"""The route, and the ``endpoint`` of the ``api.request`` usage event of each message sent."""

AUTH_SECONDS = 5.0
"""How long a client without a key header has to send its ``auth`` frame."""
CLOSE_NOT_READING = 1008
"""The close code for a client that stopped reading (its send buffer stayed full)."""
CLOSE_INTERNAL = 1011

OPENAPI_TAG = {
    "name": "sessions",
    "description": (
        "Sessions, messages, streamed replies (SSE), resume and cancel. The same over one "
        "WebSocket (OpenAPI cannot describe it as an operation): `GET "
        '/v1/kgent/sessions/{id}/ws[?after=<seq>]`. First frame `{"type": "auth", '
        '"key": "<api key>"}` within 5 s unless an `Authorization` or `X-API-Key` header '
        'was sent; then `{"type": "message", ...}` (the body of POST .../messages) and '
        '`{"type": "cancel"}`. The server sends each session event as `{"id": <stream '
        'sequence>, "event": ..., "data": ...}`; an error is `{"event": "error", '
        '"data": {"error": {"code", "message"}}}` and a close with code 4000 + '
        "its HTTP status (4401, 4403, 4404, 4429, 4503...), 1008 for a client that does not read."
    ),
}
"""The ``sessions`` tag of the OpenAPI document, which describes this route."""


class _ClientGone(Exception):
    """The client closed the connection or stopped reading: nothing more can be said to it."""


def close_code(error: KgentsError) -> int:
    """4000 + the HTTP status of ``error`` (4400...4503); 1011 for anything unexpected."""
    status = status_for(error)
    return 4000 + status if 400 <= status < 600 and status != 500 else CLOSE_INTERNAL


@router.websocket(SOCKET_PATH.removeprefix(router.prefix), name="session_socket")
async def session_socket(websocket: WebSocket, session_id: str) -> None:
    """Follow the session's events live (``?after=<seq>`` replays from there) and start or
    cancel its turns. The key comes in an ``Authorization`` or ``X-API-Key`` header, or in a
    first frame ``{"type": "auth", "key": "..."}`` within 5 s; never in the URL."""
    platform: Platform = websocket.app.state.platform
    generation: Generation = websocket.app.state.generation
    send_timeout = platform.settings.ws_send_timeout_seconds
    await websocket.accept()
    try:
        await _serve(websocket, session_id, platform, generation)
    except _ClientGone:
        return
    except KgentsError as exc:
        await _close_with(websocket, exc, within=send_timeout)
        return
    except Exception as exc:  # logged with its trace; the client learns only that it failed
        logger.error("WebSocket of session %s failed", session_id, exc_info=exc)
        unexpected = KgentsError("internal error", code="internal_error")
        await _close_with(websocket, unexpected, within=send_timeout)
        return
    with contextlib.suppress(Exception):
        await websocket.close()


async def _serve(
    websocket: WebSocket, session_id: str, platform: Platform, generation: Generation
) -> None:
    principal = await _authenticate(websocket, platform)
    principal.require_scope("sessions")
    await platform.rate_limiter.hit(
        key_id=principal.key.id, limit=principal.plan.requests_per_minute
    )
    after = websocket.query_params.get("after")
    after_seq = resume_point(after, name="after") if after is not None else None
    await platform.sessions.get_session(tenant_id=principal.tenant.id, session_id=session_id)
    with platform.streams.acquire(principal):
        follower = await generation.events.open_follower(session_id, after_seq=after_seq)
        watched = WatchedFollower(follower, platform.tenancy.watch(principal))
        try:
            await _first_to_end(
                _forward(websocket, watched, platform.settings.ws_send_timeout_seconds),
                _obey(websocket, session_id, principal, platform, generation),
            )
        finally:
            await watched.aclose()


async def _first_to_end(*jobs: Any) -> None:
    """Run ``jobs`` until one ends; cancel the others and raise what the first one raised."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()


async def _authenticate(websocket: WebSocket, platform: Platform) -> Principal:
    authorization = websocket.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    raw = credentials.strip() if scheme.lower() == "bearer" else None
    raw = raw or websocket.headers.get("x-api-key")
    if not raw:
        try:
            async with asyncio.timeout(AUTH_SECONDS):
                frame = await _next_frame(websocket)
        except TimeoutError:
            raise Unauthenticated(
                f'no {{"type": "auth", "key": "<api key>"}} frame within {AUTH_SECONDS:g} s',
                code="auth_timeout",
            ) from None
        key = frame.get("key")
        if frame.get("type") != "auth" or not isinstance(key, str) or not key:
            raise Unauthenticated('the first frame must be {"type": "auth", "key": "<api key>"}')
        raw = key
    return await platform.tenancy.authenticate(raw)


async def _next_frame(websocket: WebSocket) -> dict[str, Any]:
    """The client's next frame, a JSON object (``InvalidInput`` otherwise)."""
    try:
        text = await websocket.receive_text()
    except WebSocketDisconnect:
        raise _ClientGone from None
    except KeyError:  # a binary frame: Starlette finds no "text" in it
        raise InvalidInput("frames are JSON text") from None
    try:
        frame = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"the frame is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    if not isinstance(frame, dict):
        raise InvalidInput("a frame is a JSON object with a 'type'")
    return frame


async def _forward(websocket: WebSocket, follower: WatchedFollower, send_timeout: float) -> None:
    """Send every event the follower delivers, one frame each. A frame the client does not
    take within ``send_timeout`` (uvicorn's buffer for it is full) ends the connection."""
    async for followed in follower:
        event = followed.event
        frame = {"id": followed.seq, "event": event.type, "data": event.data}
        text = orjson.dumps(frame).decode()  # a tenth of json's CPU, the same text
        try:
            async with asyncio.timeout(send_timeout):
                await websocket.send_text(text)
        except TimeoutError:
            logger.info("closing a WebSocket client that stopped reading")
            with contextlib.suppress(Exception):
                async with asyncio.timeout(send_timeout):
                    await websocket.close(CLOSE_NOT_READING, "not reading")
            raise _ClientGone from None
        except (WebSocketDisconnect, RuntimeError, OSError):
            raise _ClientGone from None


async def _obey(
    websocket: WebSocket,
    session_id: str,
    principal: Principal,
    platform: Platform,
    generation: Generation,
) -> None:
    """Handle the client's frames until it leaves; an error ends the connection."""
    while True:
        frame = await _next_frame(websocket)
        kind = frame.pop("type", None)
        if kind == "message":
            await _start_turn(frame, session_id, principal, platform, generation)
        elif kind == "cancel":
            await platform.rate_limiter.hit(
                key_id=principal.key.id, limit=principal.plan.requests_per_minute
            )
            await platform.sessions.running_turn(
                tenant_id=principal.tenant.id, session_id=session_id
            )
            if not generation.supervisor.cancel(session_id):
                await generation.events.request_cancel(session_id)
        else:
            raise InvalidInput(f"unknown frame type {kind!r}: send 'message' or 'cancel'")


async def _start_turn(
    frame: dict[str, Any],
    session_id: str,
    principal: Principal,
    platform: Platform,
    generation: Generation,
) -> None:
    """Start a turn as ``POST .../messages`` does; its events reach the client through the
    connection's follower, which is open already."""
    try:
        body = MessageCreate.model_validate(frame)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or 'frame'}: {error['msg']}"
            for error in exc.errors()[:5]
        )
        raise InvalidInput(problems) from None
    if not generation.events.is_connected():
        raise EventsUnavailable("the event stream is unavailable; try again shortly")
    rate = RateCharge(key_id=principal.key.id, limit=principal.plan.requests_per_minute)
    # Metered as one api.request, like the POST it stands for, in the turn's transaction.
    request = usage_events.api_request(
        tenant_id=principal.tenant.id,
        endpoint=SOCKET_PATH,
        method="WS",
        status_code=200,
        at=utc_now(),
    )
    planned, user_message = await platform.sessions.start_turn(
        principal=principal,
        session_id=session_id,
        request=TurnRequest(message=body.message, mode=body.mode, budget=body.budget),
        rate=rate,
        request_events=[request],
    )
    await generation.supervisor.launch(planned, user_message)


async def _close_with(websocket: WebSocket, error: KgentsError, *, within: float) -> None:
    """Say why in an ``error`` frame, then close with the code of the error."""
    frame = {"event": "error", "data": error_body_of(error)}
    with contextlib.suppress(Exception):
        async with asyncio.timeout(within):
            await websocket.send_text(orjson.dumps(frame).decode())
            await websocket.close(close_code(error), error.code)
