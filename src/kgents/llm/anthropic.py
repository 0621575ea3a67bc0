"""The ``anthropic`` provider: the Anthropic Messages API, streamed with the official SDK.

Usage comes from the stream itself: input tokens from ``message_start`` (``input_tokens`` plus any
cache writes and reads, which Anthropic counts separately), output tokens from the cumulative
``message_delta`` usage. A stream without usage gets an estimate, labelled as such.

``temperature`` is not sent: the API version this SDK speaks (2026-10-21) rejects sampling
parameters with HTTP 400, so the mode reaches the model through the system prompt alone.

The SDK's own retries are off (``max_retries=0``) and its transport is aiohttp
(``anthropic.DefaultAioHttpClient``), both for the reasons given in ``kgents.llm.openai``.
"""

from collections.abc import AsyncGenerator

import anthropic
from anthropic.types import (
    AssistantMessageParam,
    MessageParam,
    RawContentBlockDeltaEvent,
    RawMessageDeltaEvent,
    RawMessageStartEvent,
    RawMessageStopEvent,
    UserMessageParam,
)

from kgents.errors import ProviderError
from kgents.llm import errors
from kgents.llm.base import GenerationRequest, StreamItem, TextDelta, reply_usage

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
        try:
            events = await self._client.messages.create(
                model=self.model,
                system=request.system or anthropic.omit,
                messages=_messages(request),
                max_tokens=request.max_tokens,
                stream=True,
            )
        except Exception as exc:
            raise self._translate(exc, started=False) from exc

        produced: list[str] = []
        tokens_in: int | None = None
        tokens_out: int | None = None
        stopped = False
        try:
            async for event in events:
                if isinstance(event, RawContentBlockDeltaEvent):
                    if event.delta.type == "text_delta" and event.delta.text:
                        produced.append(event.delta.text)
                        yield TextDelta(event.delta.text)
                elif isinstance(event, RawMessageStartEvent):
                    usage = getattr(event.message, "usage", None)
                    if usage is not None:
                        tokens_in = _input_tokens(usage)
                elif isinstance(event, RawMessageDeltaEvent):
                    delta_usage = getattr(event, "usage", None)
                    if delta_usage is not None:
                        tokens_out = getattr(delta_usage, "output_tokens", None)
                        if getattr(delta_usage, "input_tokens", None) is not None:
                            tokens_in = _input_tokens(delta_usage)
                elif isinstance(event, RawMessageStopEvent):
                    stopped = True
        except Exception as exc:
            raise self._translate(exc, started=True) from exc
        finally:
            await events.close()

        if not stopped:
            raise errors.malformed(_NAME, "the stream ended before message_stop")
        yield reply_usage(
            request,
            "".join(produced),
            model=self.model,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
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


# An ``event: error`` inside the stream (e.g. ``overloaded_error``) arrives as an
# ``APIStatusError`` with the stream's status, 200.
_SDK_ERRORS = errors.SDKErrors(
    timeout=anthropic.APITimeoutError,
    connection=anthropic.APIConnectionError,
    status=anthropic.APIStatusError,
)


def _input_tokens(usage: object) -> int:
    """Every prompt token: uncached input plus cache writes and cache reads."""
    parts = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    return sum(getattr(usage, part, None) or 0 for part in parts)


def _messages(request: GenerationRequest) -> list[MessageParam]:
    messages: list[MessageParam] = []
    for message in request.messages:
        if message.role == "user":
            messages.append(UserMessageParam(role="user", content=message.content))
        else:
            messages.append(AssistantMessageParam(role="assistant", content=message.content))
    return messages
