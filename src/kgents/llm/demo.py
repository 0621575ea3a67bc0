"""The ``demo`` provider: deterministic, free, no network, streams word by word.

The reply is chosen by a hash of the last user message and the temperature (which encodes the
mode), so the same question in the same mode always gets the same answer. One word is one token,
so the usage it reports is exact.
"""

import asyncio
import hashlib
from collections.abc import AsyncIterator

from kgents.llm.base import GenerationRequest, StreamItem, TextDelta, Usage

MODEL_NAME = "kgent-demo-1"

_OPENINGS = {
    0.4: "Let us reflect on what you said.",
    0.5: "Here is my advice, plainly.",
    0.6: "Allow me to challenge that a little.",
    0.8: "Let us explore this together.",
}
_SENTENCES = (
    "Every question carries the shape of the answer it hopes for.",
    "Notice which part of this feels most urgent to you, and ask why.",
    "A small experiment this week will teach more than a long debate.",
    "The constraint you resent may be the one that gives the work its form.",
    "Write the decision down, then argue against it for five minutes.",
    "What would you do if nobody were watching the outcome?",
    "Patterns repeat until they are named; naming is half the change.",
    "Energy follows attention, so choose carefully where yours goes.",
    "Simplicity is not the absence of detail but the absence of noise.",
    "Ask the person closest to the problem before the person furthest from it.",
    "The cost of waiting is real even when it is invisible.",
    "Good systems make the right thing the easy thing.",
    "Curiosity is cheaper than certainty and usually more accurate.",
    "If the plan cannot survive a bad day, it is not yet a plan.",
    "Listen for what is repeated; it is usually what matters.",
    "Progress is a series of honest corrections.",
)


def compose_reply(message: str, temperature: float) -> list[str]:
    """The words of the deterministic reply to ``message`` (40 to 120 of them)."""
    digest = hashlib.sha256(f"{temperature}:{message}".encode()).digest()
    target = 40 + digest[0] % 81
    words = _OPENINGS.get(temperature, _OPENINGS[0.4]).split()
    index = 1
    while len(words) < target:
        sentence = _SENTENCES[digest[index % len(digest)] % len(_SENTENCES)]
        words.extend(sentence.split())
        index += 1
    return words[:target]


class DemoProvider:
    """Deterministic provider that streams one word per chunk with a fixed delay."""

    name = "demo"
    model = MODEL_NAME

    def __init__(self, *, token_delay_ms: int = 15) -> None:
        self._delay = token_delay_ms / 1000

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        words = compose_reply(last_user, request.temperature)[: request.max_tokens]
        tokens_in = len(request.system.split()) + sum(
            len(m.content.split()) for m in request.messages
        )
        for position, word in enumerate(words):
            if position and self._delay:
                await asyncio.sleep(self._delay)
            yield TextDelta(word if position == 0 else f" {word}")
        yield Usage(tokens_in=tokens_in, tokens_out=len(words), model=MODEL_NAME)

    async def check(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None
