"""``KgentsClient``: the tenant HTTP API for terminals and scripts (synchronous, over httpx).

Plain calls return typed values or raise ``ApiError`` with the API's code and message (or
``Unreachable``). ``send`` and ``follow`` return streams that resume after a dropped
connection (``kgents.client.streams``).
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from kgents import __version__
from kgents.client.errors import ApiError, Unreachable
from kgents.client.streams import RetryPolicy, SessionFollow, TurnStream

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_SECONDS = 30.0
STREAM_READ_TIMEOUT_SECONDS = 45.0
"""The server sends a heartbeat every 15 s: three missed ones mean the connection is dead."""

ReconnectCallback = Callable[[int | None], None]


@dataclass(frozen=True, slots=True)
class SessionInfo:
    id: str
    title: str | None
    mode: str
    status: str
    message_count: int
    tokens_used: int

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> "SessionInfo":
        return cls(
            id=str(body["id"]),
            title=body.get("title"),
            mode=str(body.get("mode", "")),
            status=str(body.get("status", "")),
            message_count=int(body.get("message_count", 0)),
            tokens_used=int(body.get("tokens_used", 0)),
        )


def api_error_of(response: httpx.Response) -> ApiError:
    """The API's error body as an ``ApiError`` (problem+json and non-JSON bodies too)."""
    status = response.status_code
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and "message" in error:
            return ApiError(status, str(error.get("code", f"http_{status}")), str(error["message"]))
        if "detail" in body or "title" in body:  # application/problem+json
            message = str(body.get("detail") or body.get("title"))
            return ApiError(status, f"http_{status}", message)
    text = response.text.strip()[:200] if response.text else ""
    return ApiError(status, f"http_{status}", text or response.reason_phrase or "error")


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class KgentsClient:
    """A client of one kgents server with one API key. Close it (or use ``with``)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        stream_read_timeout: float = STREAM_READ_TIMEOUT_SECONDS,
        retry: RetryPolicy | None = None,
        on_reconnect: ReconnectCallback | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"User-Agent": f"kgents-client/{__version__}", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._on_reconnect = on_reconnect
        self._stream_timeout = httpx.Timeout(timeout, read=stream_read_timeout)
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "KgentsClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Plain requests

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str | int] | None = None,
    ) -> httpx.Response:
        """One request; an error status raises ``ApiError``, no answer ``Unreachable``."""
        try:
            response = self._http.request(method, path, json=json, params=params)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach {self.base_url}: {_describe(exc)}") from exc
        if response.is_error:
            raise api_error_of(response)
        return response

    def create_session(self, *, title: str | None = None, mode: str | None = None) -> SessionInfo:
        body: dict[str, str] = {}
        if title is not None:
            body["title"] = title
        if mode is not None:
            body["mode"] = mode
        return SessionInfo.of(self.request("POST", "/v1/kgent/sessions", json=body).json())

    def get_session(self, session_id: str) -> SessionInfo:
        return SessionInfo.of(self.request("GET", f"/v1/kgent/sessions/{session_id}").json())

    def messages(self, session_id: str, *, limit: int = 50, offset: int = 0) -> dict[str, Any]:
        """One page of the conversation: ``{"messages": [...], "total": n, "session_id"}``."""
        response = self.request(
            "GET",
            f"/v1/kgent/sessions/{session_id}/messages",
            params={"limit": limit, "offset": offset},
        )
        page: dict[str, Any] = response.json()
        return page

    def cancel(self, session_id: str) -> bool:
        """Stop the session's running turn; False when none was running (409)."""
        try:
            self.request("POST", f"/v1/kgent/sessions/{session_id}/cancel")
        except ApiError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def budgets(self) -> dict[str, Any]:
        """``GET /v1/kgent/budgets``: ``{"plan", "budgets": [...], "default"}`` of this key."""
        answer: dict[str, Any] = self.request("GET", "/v1/kgent/budgets").json()
        return answer

    def usage(self) -> Any:
        """``GET /v1/usage``: the tenant's usage, as the server reports it (JSON)."""
        return self.request("GET", "/v1/usage").json()

    # Streams

    def send(
        self,
        session_id: str,
        message: str,
        *,
        mode: str | None = None,
        budget: str | None = None,
    ) -> TurnStream:
        """A turn: iterating it sends ``message`` and yields the reply's events as they come.

        Nothing is sent until the stream is iterated (or ``wait()`` is called)."""
        body: dict[str, Any] = {"message": message, "stream": True}
        if mode is not None:
            body["mode"] = mode
        if budget is not None:
            body["budget"] = budget
        return TurnStream(self, session_id, body)

    def follow(
        self, session_id: str, *, after: int | None = None, from_start: bool = False
    ) -> SessionFollow:
        """The session's events after ``after`` (or all with ``from_start``, or only new ones),
        then live ones, until the stream is closed."""
        return SessionFollow(self, session_id, after=after, from_start=from_start)

    # Used by the streams

    def open_stream(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send a request whose answer is an event stream; the body is left unread."""
        request = self._http.build_request(
            method,
            path,
            json=json,
            params=params,
            headers={"Accept": "text/event-stream", **(headers or {})},
            timeout=self._stream_timeout,
        )
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach {self.base_url}: {_describe(exc)}") from exc
        if response.is_error:
            try:
                response.read()
            except httpx.TransportError as exc:
                raise Unreachable(f"{self.base_url} dropped an error answer") from exc
            finally:
                response.close()
            raise api_error_of(response)
        return response

    def find_user_message(self, session_id: str, content: str) -> str | None:
        """The id of the latest user message of the session with exactly ``content``."""
        total = int(self.messages(session_id, limit=1)["total"])
        recent = self.messages(session_id, limit=20, offset=max(0, total - 20))["messages"]
        for message in reversed(recent):
            if message.get("role") == "user" and message.get("content") == content:
                return str(message["id"])
        return None

    def notify_reconnect(self, last_event_id: int | None) -> None:
        if self._on_reconnect is not None:
            self._on_reconnect(last_event_id)
