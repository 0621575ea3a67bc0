"""The ``openai`` provider: any OpenAI-compatible chat completions server (OpenAI, vLLM, Ollama,
llama.cpp server), streamed with the official SDK.

Usage comes from the server's own final report (``stream_options.include_usage``: the last chunk
has empty ``choices`` and a ``usage``). Servers that send none get an estimate, labelled as such.

The SDK's own retries are off (``max_retries=0``): a retry with back-off can hold a turn for many
seconds before the first token, and every failure already reaches the caller with a ``retryable``
flag, so the decision to try again stays with the caller.
"""

from collections.abc import AsyncGenerator

import openai
from openai.types.chat import (
    ChatCompletionAssistantMessageParam,
    ChatCompletionMessageParam,
    ChatCompletionSystemMessageParam,
    ChatCompletionUserMessageParam,
)
from openai.types.completion_usage import CompletionUsage

from kgents.errors import ProviderError
from kgents.llm import errors
from kgents.llm.base import (
    GenerationRequest,
    StreamItem,
    TextDelta,
    Usage,
    estimate_request_tokens,
    estimate_tokens,
)

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
CHECK_TIMEOUT_SECONDS = 5.0
_NAME = "openai"


class OpenAIProvider:
    """Streams chat completions from an OpenAI-compatible server."""

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
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url or DEFAULT_BASE_URL,
            timeout=timeout_seconds,
            max_retries=0,
        )

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamItem, None]:
        """Yield each text delta as the server sends it, then one ``Usage``.

        Raises ``ProviderError`` (codes in ``kgents.llm.errors``), also after some deltas.
        """
        try:
            chunks = await self._client.chat.completions.create(
                model=self.model,
                messages=_messages(request),
                temperature=request.temperature,
                max_tokens=request.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
        except Exception as exc:
            raise self._translate(exc, started=False) from exc

        produced: list[str] = []
        reported: CompletionUsage | None = None
        finished = False
        try:
            async for chunk in chunks:
                if chunk.usage is not None:
                    reported = chunk.usage
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    if choice.delta.content:
                        produced.append(choice.delta.content)
                        yield TextDelta(choice.delta.content)
                    if choice.finish_reason is not None:
                        finished = True
        except Exception as exc:
            raise self._translate(exc, started=True) from exc
        finally:
            await chunks.close()

        if not finished:
            raise errors.malformed(_NAME, "the stream ended before the reply was complete")
        if reported is None:
            yield Usage(
                tokens_in=estimate_request_tokens(request),
                tokens_out=estimate_tokens("".join(produced)),
                model=self.model,
                estimated=True,
            )
        else:
            yield Usage(
                tokens_in=reported.prompt_tokens,
                tokens_out=reported.completion_tokens,
                model=self.model,
            )

    async def check(self) -> bool:
        """Ready when ``GET /models`` answers within a few seconds.

        Listing models spends no tokens, yet proves the server is reachable and accepts the key;
        every OpenAI-compatible server (vLLM, Ollama, llama.cpp) serves it.
        """
        try:
            await self._client.models.list(timeout=self._check_timeout)
        except Exception:
            return False
        return True

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.close()

    def _translate(self, exc: Exception, *, started: bool) -> ProviderError:
        if isinstance(exc, ProviderError):
            return exc
        if isinstance(exc, openai.APITimeoutError):
            return errors.timed_out(_NAME)
        if isinstance(exc, openai.APIConnectionError):
            return errors.connection_lost(_NAME) if started else errors.unreachable(_NAME)
        if isinstance(exc, openai.APIStatusError):
            _, detail = errors.error_fields(exc.body)
            return errors.from_status(_NAME, exc.status_code, errors.redact(detail, self._api_key))
        if isinstance(exc, openai.APIError):
            # An ``{"error": ...}`` object sent as a stream event.
            error_type, detail = errors.error_fields(exc.body)
            return errors.from_error_event(_NAME, error_type, errors.redact(detail, self._api_key))
        return errors.unexpected(_NAME, exc, started=started)


def _messages(request: GenerationRequest) -> list[ChatCompletionMessageParam]:
    messages: list[ChatCompletionMessageParam] = []
    if request.system:
        messages.append(ChatCompletionSystemMessageParam(role="system", content=request.system))
    for message in request.messages:
        if message.role == "user":
            messages.append(ChatCompletionUserMessageParam(role="user", content=message.content))
        else:
            messages.append(
                ChatCompletionAssistantMessageParam(role="assistant", content=message.content)
            )
    return messages
