"""The ``anthropic`` provider: the Anthropic Messages API, streamed with the official SDK.

The SDK makes the request (its authentication and ``anthropic-version`` headers, base URL,
timeouts, error statuses become its exception classes) through its lower-level call,
``client.post("/v1/messages", cast_to=httpx2.Response, stream=True)``, with the body a plain
dict, as ``kgents.llm.openai`` does and for the same reasons.

The body is read raw (``kgents.llm.sse``): each event's ``data:`` is parsed with ``orjson.loads``
and dispatched on its ``type``; the SDK's typed event model per token is not built. What is
read: ``message_start`` (input usage), the text of each ``content_block_delta`` whose delta is a
``text_delta``, ``message_delta`` (the cumulative output usage), ``message_stop`` (the reply is
complete) and ``error`` (mapped like the SDK's own in-stream error); ``ping`` and the rest are
skipped. A stream that ends before ``message_stop`` is malformed.

Usage comes from the stream itself: input tokens from ``message_start`` (``input_tokens`` plus any
cache writes and reads, which Anthropic counts separately), output tokens from the cumulative
``message_delta`` usage. A stream without usage gets an estimate, labelled as such.

``temperature`` is not sent: the API version this SDK speaks (2026-10-21) rejects sampling
parameters with HTTP 400, so the mode reaches the model through the system prompt alone.

The SDK's own retries are off (``max_retries=0``) and its transport is aiohttp
(``anthropic.DefaultAioHttpClient``), both for the reasons given in ``kgents.llm.openai``.
"""

from collections.abc import AsyncGenerator, Mapping
from functools import partial
from typing import Any

import anthropic
import httpx2
import orjson

from kgents.errors import ProviderError
from kgents.llm import errors
from kgents.llm.base import GenerationRequest, StreamItem, TextDelta, reply_usage
from kgents.llm.sse import ErrorEvent, SSEData, open_body

DEFAULT_MODEL = "claude-sonnet-4-6"
DEFAULT_BASE_URL = "https://api.anthropic.com"
CHECK_TIMEOUT_SECONDS = 5.0
_NAME = "anthropic"


class AnthropicProvider:
    """Streams replies from the Anthropic Messages API."""

    name = _NAME

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        model: str | None = None,
        timeout_seconds: float = 60.0,
    ) -> None:
        self.model = model or DEFAULT_MODEL
        self._api_key = api_key
        self._check_timeout = min(CHECK_TIMEOUT_SECONDS, timeout_seconds)
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url or DEFAULT_BASE_URL,
            timeout=timeout_seconds,
            max_retries=0,
            http_client=anthropic.DefaultAioHttpClient(timeout=timeout_seconds),
        )

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamItem, None]:
        """Yield each text delta as the API sends it, then one ``Usage``.

        Raises ``ProviderError`` (codes in ``kgents.llm.errors``), also after some deltas.
        """
        reply = _Reply()
        failed = partial(self._translate, started=False)
        async with open_body(self._start(request), failed) as chunks:
            events = SSEData()
            try:
                async for chunk in chunks:
                    for data in events.feed(chunk):
                        text = reply.take(data)
                        if text:
                            yield TextDelta(text)
            except Exception as exc:
                raise self._translate(exc, started=True) from exc

        if not reply.stopped:
            raise errors.malformed(_NAME, "the stream ended before message_stop")
        yield reply_usage(
            request,
            "".join(reply.produced),
            model=self.model,
            tokens_in=reply.tokens_in,
            tokens_out=reply.tokens_out,
        )

    async def _start(self, request: GenerationRequest) -> httpx2.Response:
        """Send the request; the response's body is left unread (the caller closes it)."""
        body: dict[str, Any] = {
            "model": self.model,
            "messages": _messages(request),
            "max_tokens": request.max_tokens,
            "stream": True,
        }
        if request.system:
            body["system"] = request.system
        return await self._client.post(
            "/v1/messages", body=body, cast_to=httpx2.Response, stream=True
        )

    async def check(self) -> str | None:
        """Ready when ``GET /v1/models`` answers within a few seconds; else the failure's message.

        Listing models spends no tokens, yet proves the API is reachable and accepts the key.
        """
        try:
            await self._client.models.list(limit=1, timeout=self._check_timeout)
        except Exception as exc:
            return self._translate(exc, started=False).message
        return None

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.close()

    def _translate(self, exc: Exception, *, started: bool) -> ProviderError:
        return errors.from_exception(
            _NAME, exc, started=started, secret=self._api_key, sdk=_SDK_ERRORS
        )


_SDK_ERRORS = errors.SDKErrors(
    timeout=anthropic.APITimeoutError,
    connection=anthropic.APIConnectionError,
    status=anthropic.APIStatusError,
    in_stream=(ErrorEvent,),
)


class _Reply:
    """What the events of one reply said so far: texts, its usage, whether it stopped."""

    __slots__ = ("produced", "stopped", "tokens_in", "tokens_out")

    def __init__(self) -> None:
        self.produced: list[str] = []
        self.tokens_in: int | None = None
        self.tokens_out: int | None = None
        self.stopped = False

    def take(self, data: bytes) -> str | None:
        """Read one event's ``data:``; the text it adds to the reply, if any.

        Raises ``ErrorEvent`` for an ``error`` event, ``ValueError`` when the data is not a JSON
        object or a text delta's text is not text.
        """
        event: Any = orjson.loads(data)
        if not isinstance(event, dict):
            raise ValueError("a stream event that is not a JSON object")
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta")
            if not isinstance(delta, dict) or delta.get("type") != "text_delta":
                return None
            text = delta.get("text")
            if not text:
                return None
            if not isinstance(text, str):
                raise ValueError("a text delta whose text is not text")
            self.produced.append(text)
            return text
        if kind == "message_start":
            message = event.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, Mapping):
                self.tokens_in = _input_tokens(usage)
        elif kind == "message_delta":
            usage = event.get("usage")
            if isinstance(usage, Mapping):
                self.tokens_out = _count(usage.get("output_tokens"))
                if usage.get("input_tokens") is not None:
                    self.tokens_in = _input_tokens(usage)
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            raise ErrorEvent(event)
        return None


def _count(value: object) -> int | None:
    return value if type(value) is int else None


def _input_tokens(usage: Mapping[str, object]) -> int:
    """Every prompt token: uncached input plus cache writes and cache reads."""
    parts = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    return sum(_count(usage.get(part)) or 0 for part in parts)


def _messages(request: GenerationRequest) -> list[dict[str, str]]:
    return [
        {"role": "user" if m.role == "user" else "assistant", "content": m.content}
        for m in request.messages
    ]
