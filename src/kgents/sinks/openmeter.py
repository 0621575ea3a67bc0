"""Forwarding usage events to OpenMeter's ingest API (the processor's ``UsageSink``).

``send(events)`` POSTs one CloudEvents batch to ``<url>/api/v1/events`` with content type
``application/cloudevents-batch+json`` (and ``Authorization: Bearer <token>`` when a token is
configured) and returns once OpenMeter answered 2xx. The batch is what the processor fetched
in one go: at most 100 events, gathered for at most about one second.

Failures, and what the caller sees:

===========================================  ====================================================
5xx, 429, 408, timeouts, connection errors   retried here a few times with exponential backoff
                                             and jitter (``Retry-After`` honoured up to the
                                             backoff cap); then ``Unavailable``
401, 403, 404, other 4xx                     ``Unavailable`` at once: a wrong token or URL is an
                                             operator's fix, not the events' fault, so they wait
400, 413, 415, 422                           ``InvalidInput``: OpenMeter refuses these events
===========================================  ====================================================

A retry after a timeout may deliver a batch OpenMeter had already taken; its dedupe by event
``(source, id)`` absorbs that. Every attempt is bounded by ``timeout_seconds``, so one ``send``
takes at most about ``attempts * timeout_seconds`` plus the backoff. The token is never logged
and never part of an error message.
"""

import asyncio
import logging
import random
from collections.abc import Sequence

import httpx

from kgents.config import Settings
from kgents.errors import InvalidInput, Unavailable
from kgents.metering import cloudevents
from kgents.records import UsageEvent

logger = logging.getLogger(__name__)

INGEST_PATH = "/api/v1/events"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
DEFAULT_TIMEOUT_SECONDS = 5.0
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF_SECONDS = 0.25
DEFAULT_MAX_BACKOFF_SECONDS = 2.0
REFUSED_STATUSES = frozenset({400, 413, 415, 422})
RETRIED_STATUSES = frozenset({408, 429})
_MAX_DETAIL = 300


class OpenMeterSink:
    """A client of one OpenMeter (or any server with its ingest API, such as kgents itself)."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        attempts: int = DEFAULT_ATTEMPTS,
        backoff_seconds: float = DEFAULT_BACKOFF_SECONDS,
        max_backoff_seconds: float = DEFAULT_MAX_BACKOFF_SECONDS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        base = url.strip().rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise InvalidInput(f"OpenMeter URL must be http(s)://…, got {url!r}")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        self.endpoint = base if base.endswith(INGEST_PATH) else base + INGEST_PATH
        self._attempts = attempts
        self._backoff = backoff_seconds
        self._max_backoff = max_backoff_seconds
        headers = {"Content-Type": BATCH_CONTENT_TYPE, "Accept": "application/problem+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout_seconds),
            transport=transport,
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"OpenMeterSink({self.endpoint!r})"  # never the token

    async def send(self, events: Sequence[UsageEvent]) -> None:
        """Deliver ``events`` as one batch; see the module docstring for the failures."""
        if not events:
            return
        body = cloudevents.encode_batch(events)  # InvalidInput if an event is not JSON
        problem = "no attempt made"
        retry_after: float | None = None
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(self._pause(attempt, retry_after))
            retry_after = None
            try:
                response = await self._client.post(self.endpoint, content=body)
            except httpx.TimeoutException:
                problem = "timed out"
                continue
            except httpx.TransportError as exc:
                problem = f"connection failed ({type(exc).__name__})"
                continue
            status = response.status_code
            if 200 <= status < 300:
                return
            problem = f"{status} {_detail(response)}".strip()
            if status in REFUSED_STATUSES:
                raise InvalidInput(f"OpenMeter refused the events: {problem}")
            if status in RETRIED_STATUSES or status >= 500:
                retry_after = _retry_after(response)
                continue
            raise Unavailable(f"OpenMeter answered {problem}", code="openmeter_unavailable")
        raise Unavailable(
            f"OpenMeter unavailable after {self._attempts} attempts: {problem}",
            code="openmeter_unavailable",
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    def _pause(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, or the server's ``Retry-After`` (both capped)."""
        if retry_after is not None:
            return min(retry_after, self._max_backoff)
        delay = min(self._backoff * 2.0 ** (attempt - 1), self._max_backoff)
        return delay * (0.5 + random.random() / 2)  # noqa: S311 (timing jitter, not security)


def configured_sink(settings: Settings) -> OpenMeterSink | None:
    """The OpenMeter of ``KGENTS_OPENMETER_URL`` (and its token), or ``None`` when unset."""
    if not settings.openmeter_url:
        return None
    token = settings.openmeter_token
    return OpenMeterSink(
        settings.openmeter_url,
        token=token.get_secret_value() if token else None,
        timeout_seconds=settings.openmeter_timeout_seconds,
    )


def _detail(response: httpx.Response) -> str:
    """OpenMeter's problem ``detail`` (or ``title``), else the start of the body."""
    try:
        problem = response.json()
    except ValueError:
        problem = None
    if isinstance(problem, dict):
        text = problem.get("detail") or problem.get("title") or ""
        if isinstance(text, str) and text:
            return text[:_MAX_DETAIL]
    return response.text[:_MAX_DETAIL]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff
    return seconds if seconds >= 0 else None
