"""One streaming interface for every LLM provider.

A provider's ``stream`` yields ``TextDelta`` items as the model produces them and ends with exactly
one ``Usage``. It is an async iterator, not a callback, so the generation task can forward each
delta to the event stream as it arrives.
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

Role = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """Everything a provider needs for one reply."""

    system: str
    messages: tuple[ChatMessage, ...]
    temperature: float
    max_tokens: int


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one reply; ``estimated`` when the provider reported none."""

    tokens_in: int
    tokens_out: int
    model: str
    estimated: bool = False


StreamItem = TextDelta | Usage


class LLMProvider(Protocol):
    """What the sessions service needs from a model."""

    name: str
    model: str

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        """Yield text deltas as they are produced, then one ``Usage``.

        Raises ``ProviderError`` on connection failures, auth errors, rate limits, 5xx, timeouts.
        """
        ...

    async def check(self) -> str | None:
        """Cheap readiness check for ``/health`` (no tokens spent): ``None`` when the provider
        answers, else why not in one line (redacted, as a ``ProviderError`` message is)."""
        ...

    async def aclose(self) -> None: ...


def reply_usage(
    request: GenerationRequest,
    produced: str,
    *,
    model: str,
    tokens_in: int | None,
    tokens_out: int | None,
) -> Usage:
    """The ``Usage`` of a finished reply: the counts the provider reported, and an estimate
    (then ``estimated``) for each it did not, from ``request`` and the ``produced`` text."""
    return Usage(
        tokens_in=estimate_request_tokens(request) if tokens_in is None else tokens_in,
        tokens_out=estimate_tokens(produced) if tokens_out is None else tokens_out,
        model=model,
        estimated=tokens_in is None or tokens_out is None,
    )


def estimate_tokens(text: str) -> int:
    """Rough token count (about four characters a token) for history trimming and estimates."""
    return max(1, (len(text) + 3) // 4) if text else 0


def estimate_request_tokens(request: GenerationRequest) -> int:
    """Estimated prompt tokens of ``request``, for turns the provider never reported on."""
    return estimate_tokens(request.system) + sum(
        estimate_tokens(message.content) for message in request.messages
    )
