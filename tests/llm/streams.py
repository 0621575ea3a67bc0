"""Helpers of the provider tests: a sample request and ways to drain a provider's stream."""

import time
from dataclasses import dataclass, field

from kgents.errors import ProviderError
from kgents.llm.base import ChatMessage, GenerationRequest, LLMProvider, TextDelta, Usage

SYSTEM = "You are K-gent. Current mode: reflect."
HISTORY = (
    ChatMessage(role="user", content="What should I work on?"),
    ChatMessage(role="assistant", content="What feels most urgent?"),
    ChatMessage(role="user", content="The release."),
)


def sample_request(*, temperature: float = 0.4, max_tokens: int = 256) -> GenerationRequest:
    return GenerationRequest(
        system=SYSTEM, messages=HISTORY, temperature=temperature, max_tokens=max_tokens
    )


@dataclass
class Drained:
    """What a stream produced: its deltas (with arrival times), its usage, or its error."""

    started: float = field(default_factory=time.monotonic)
    deltas: list[str] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    usages: list[Usage] = field(default_factory=list)
    error: ProviderError | None = None

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    @property
    def offsets(self) -> list[float]:
        """Seconds from the start of the request to each delta."""
        return [arrival - self.started for arrival in self.arrivals]

    @property
    def gaps(self) -> list[float]:
        """Seconds between consecutive deltas."""
        return [b - a for a, b in zip(self.arrivals, self.arrivals[1:], strict=False)]

    @property
    def usage(self) -> Usage:
        assert len(self.usages) == 1, self.usages
        return self.usages[0]


async def drain(provider: LLMProvider, request: GenerationRequest | None = None) -> Drained:
    """Read the whole stream, keeping a ``ProviderError`` instead of raising it.

    Also checks the contract: deltas only before the one ``Usage``, which comes last.
    """
    drained = Drained()
    try:
        async for item in provider.stream(request or sample_request()):
            assert not drained.usages, "nothing may follow the Usage"
            if isinstance(item, TextDelta):
                drained.deltas.append(item.text)
                drained.arrivals.append(time.monotonic())
            else:
                drained.usages.append(item)
    except ProviderError as exc:
        drained.error = exc
    return drained


async def failure(provider: LLMProvider) -> ProviderError:
    """The ``ProviderError`` that ends the stream (the test fails if there is none)."""
    drained = await drain(provider)
    assert drained.error is not None, "the stream should have failed"
    assert not drained.usages, "a failed stream yields no Usage"
    return drained.error
