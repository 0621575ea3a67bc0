"""The ``demo`` provider: deterministic, free, no network, streams word by word.

A reply is composed from sentences written for K-gent's four modes: an opening that picks up
a word of the question, a few sentences of substance and a closing question, chosen by a
hash of the question and the mode (the temperature encodes it). So the same question in the
same mode always gets the same answer, two questions get different ones, and a reply cut to
fit ``max_tokens`` still ends on a whole sentence. One word is one token, so the usage it
reports is exact.
"""

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from kgents.llm.base import GenerationRequest, StreamItem, TextDelta, Usage

MODEL_NAME = "kgent-demo-1"
MIN_WORDS = 40
MAX_WORDS = 120


@dataclass(frozen=True, slots=True)
class _Voice:
    """What K-gent says in one mode. ``{word}`` is a word taken from the question."""

    openings: tuple[str, ...]
    plain_openings: tuple[str, ...]  # for a question with no word worth picking up
    body: tuple[str, ...]
    closings: tuple[str, ...]


_REFLECT = _Voice(
    openings=(
        "What I hear first is “{word}”, and it seems to carry more weight than the rest.",
        "You mention “{word}”, so let us start there.",
        "The word “{word}” stands out in what you wrote.",
        "Let me mirror back what I heard: this is about “{word}”, and about more than that.",
    ),
    plain_openings=(
        "Let me mirror back what I heard before saying anything else.",
        "Before any answer, let us look at the question itself.",
    ),
    body=(
        "It sounds as if part of you already knows what you want, and part of you is not sure "
        "it is allowed.",
        "There is an assumption underneath this: that there is one right answer to find.",
        "You describe the situation carefully, but you say little about how it feels.",
        "Notice which part of this you wrote first; it is often the part that matters most.",
        "The question seems to be less about what to do than about what it would mean.",
        "I notice a tension between what you expect of yourself and what you can give right now.",
        "Some of this sounds like a decision, and some of it sounds like a worry.",
        "If this were settled tomorrow, the relief would tell you what it was really about.",
        "Patterns tend to repeat until they are named, and naming one is half the change.",
        "It may help to separate what you know from what you fear.",
    ),
    closings=(
        "What would change for you if that assumption turned out to be wrong?",
        "Which part of this feels most true when you read it back?",
        "What are you hoping I will say?",
        "Where do you feel this most: in the plan, or in yourself?",
    ),
)

_ADVISE = _Voice(
    openings=(
        "Here is my advice on “{word}”, as plainly as I can put it.",
        "On “{word}”, I would start small and concrete.",
        "Let us turn “{word}” into a few steps you can take this week.",
        "On “{word}”, here is what I would do in your place.",
    ),
    plain_openings=(
        "Here is my advice, as plainly as I can put it.",
        "Let us turn this into a few steps you can take this week.",
    ),
    body=(
        "Write down the outcome you want in one sentence, and keep it where you can see it.",
        "Pick the smallest step that would make a visible difference, and do it today.",
        "Give yourself a deadline, because an open question grows to fill the time it has.",
        "Ask the person closest to the problem before the person furthest from it.",
        "Decide in advance what would make you stop, so a bad week does not decide for you.",
        "Keep a short log of what you try and what happens; it turns guesses into evidence.",
        "Protect one uninterrupted hour a day for the work that matters most.",
        "If two options look equal, choose the one that is easier to undo.",
        "Say no to one thing this week, so the rest has room.",
        "Review the plan after seven days and change it without guilt.",
    ),
    closings=(
        "Which of these steps can you take before the end of the day?",
        "What would make the first step easier to start?",
        "Who could you ask to check in with you next week?",
        "Which step are you most tempted to skip, and why?",
    ),
)

_CHALLENGE = _Voice(
    openings=(
        "Let me push back on “{word}” a little.",
        "I am not sure “{word}” is the real problem here.",
        "Allow me to question the premise behind “{word}”.",
        "Here is the strongest case against how you framed “{word}”.",
    ),
    plain_openings=(
        "Let me push back on the premise a little.",
        "Here is the strongest case against how you framed this.",
    ),
    body=(
        "You may be solving the problem you can see instead of the one that matters.",
        "The constraint you resent might be the one that gives the work its shape.",
        "If a friend brought you this plan, would you tell them it was ready?",
        "Waiting has a cost too, even when nobody sends you the bill.",
        "It is possible that more information will not make this decision easier.",
        "The option you dismissed quickest deserves a second look.",
        "Consider that the people involved may see the situation very differently.",
        "A plan that only works on a good day is not yet a plan.",
        "Being certain and being right feel the same from the inside.",
        "What you call a risk might be the part that makes it worth doing.",
    ),
    closings=(
        "What evidence would change your mind?",
        "What would you do if the obvious answer were not available?",
        "Which of your assumptions would you least like to test?",
        "What is the argument you have been avoiding?",
    ),
)

_EXPLORE = _Voice(
    openings=(
        "Let us explore “{word}” from a few unexpected angles.",
        "“{word}” opens more doors than it first seems to.",
        "There are more ways to look at “{word}” than the one you started with.",
        "Let us wander around “{word}” for a moment before deciding anything.",
    ),
    plain_openings=(
        "Let us explore this from a few unexpected angles.",
        "There are more ways to look at this than the one you started with.",
    ),
    body=(
        "Imagine the same question asked by someone ten years older, or ten years younger.",
        "A gardener would treat this as a season rather than a task.",
        "What if the goal were to learn as much as possible rather than to succeed at once?",
        "There may be a version of this that is playful instead of heavy.",
        "Sometimes the answer lives in a neighbouring field, where the same problem has "
        "another name.",
        "Try describing it as a story: who is the hero, and what do they want?",
        "Curiosity is cheaper than certainty and usually more accurate.",
        "The opposite of your plan could teach you something, even if you never try it.",
        "Think of three people you admire and how each of them would start.",
        "Small experiments turn a big unknown into many small knowns.",
    ),
    closings=(
        "Which of these angles surprises you most?",
        "What would you try if you knew it could not fail?",
        "Where else in your life have you met this question before?",
        "What is one experiment you could run this week just to learn?",
    ),
)

_VOICES = {0.4: _REFLECT, 0.5: _ADVISE, 0.6: _CHALLENGE, 0.8: _EXPLORE}
# The smallest replies, for budgets too small for a composed one (longest first).
_SHORT = ("Tell me more about that.", "Tell me more.", "Go on.", "Noted.")
_STOPWORDS = frozenset(
    """about above after again also because been before being between could does doing
    during each from have having here just like more most much must myself only other
    ought over same should some such than that their them then there these they this those
    through under until very want were what when where which while will with would your
    yours yourself""".split()
)
_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")


def compose_reply(message: str, temperature: float, *, max_words: int | None = None) -> list[str]:
    """The words of the deterministic reply to ``message`` in the mode of ``temperature``
    (40 to 120 of them), cut to the whole sentences that fit ``max_words``."""
    voice = _VOICES.get(temperature, _REFLECT)
    digest = hashlib.sha256(f"{temperature}:{message}".encode()).digest()
    word = _salient_word(message)
    openings = voice.openings if word else voice.plain_openings
    opening = openings[digest[0] % len(openings)].format(word=word)
    closing = voice.closings[digest[1] % len(voice.closings)]
    target = MIN_WORDS + digest[2] % (MAX_WORDS - MIN_WORDS + 1)
    body: list[str] = []
    length = _words(opening) + _words(closing)
    for sentence in _shuffled(voice.body, digest[3:]):
        # Up to the target, and in any case to the least length, never past the most.
        grown = length + _words(sentence)
        if grown <= target or (length < MIN_WORDS and grown <= MAX_WORDS):
            body.append(sentence)
            length += _words(sentence)
    sentences = [opening, *body, closing]
    if max_words is not None:
        sentences = _fitting(sentences, max_words)
    return " ".join(sentences).split()


def _words(sentence: str) -> int:
    return len(sentence.split())


def _salient_word(message: str) -> str:
    """The question's longest word that says something (the first of the longest), or ""."""
    words = [w for w in _WORD.findall(message) if len(w) >= 4 and w.lower() not in _STOPWORDS]
    if not words:
        return ""
    longest: str = max(words, key=len)
    return longest[:40]


def _shuffled(options: Sequence[str], entropy: bytes) -> list[str]:
    """``options`` in an order given by ``entropy`` (one byte per option)."""
    left = list(options)
    return [left.pop(byte % len(left)) for byte in entropy[: len(left)]]


def _fitting(sentences: list[str], max_words: int) -> list[str]:
    """The sentences that fit in ``max_words``: body sentences go first, from the last,
    then the closing question; a budget too small for the opening gets a short reply."""
    kept = list(sentences)
    while kept and sum(len(s.split()) for s in kept) > max_words:
        kept.pop(-2 if len(kept) > 2 else -1)
    if kept:
        return kept
    return [next((s for s in _SHORT if len(s.split()) <= max_words), "")] if max_words else []


class DemoProvider:
    """Deterministic provider that streams one word per chunk with a fixed delay."""

    name = "demo"
    model = MODEL_NAME

    def __init__(self, *, token_delay_ms: int = 15) -> None:
        self._delay = token_delay_ms / 1000

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamItem]:
        last_user = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
        words = compose_reply(last_user, request.temperature, max_words=request.max_tokens)
        tokens_in = len(request.system.split()) + sum(
            len(m.content.split()) for m in request.messages
        )
        for position, word in enumerate(words):
            if position and self._delay:
                await asyncio.sleep(self._delay)
            yield TextDelta(word if position == 0 else f" {word}")
        yield Usage(tokens_in=tokens_in, tokens_out=len(words), model=MODEL_NAME)

    async def check(self) -> str | None:
        return None

    async def aclose(self) -> None:
        return None
