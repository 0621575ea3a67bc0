"""The demo provider: deterministic, word by word, exact usage, no network."""

import asyncio
import re

import pytest

from kgents.llm.base import ChatMessage, GenerationRequest
from kgents.llm.demo import MODEL_NAME, DemoProvider, compose_reply
from tests.llm.streams import drain, sample_request

pytestmark = pytest.mark.anyio

MODES = {0.4: "reflect", 0.5: "advise", 0.6: "challenge", 0.8: "explore"}


def ask(message: str, *, temperature: float = 0.4, max_tokens: int = 512) -> GenerationRequest:
    return GenerationRequest(
        system="Be brief.",
        messages=(ChatMessage(role="user", content=message),),
        temperature=temperature,
        max_tokens=max_tokens,
    )


async def test_the_same_question_in_the_same_mode_gets_the_same_reply() -> None:
    provider = DemoProvider(token_delay_ms=0)

    first = await drain(provider, ask("How do I start?"))
    second = await drain(provider, ask("How do I start?"))

    assert first.deltas == second.deltas
    assert first.usage == second.usage


async def test_the_reply_depends_on_the_question_and_the_mode() -> None:
    provider = DemoProvider(token_delay_ms=0)

    replies = {
        (await drain(provider, ask(question, temperature=temperature))).text
        for question in ("How do I start?", "What is next?")
        for temperature in (0.4, 0.8)
    }

    assert len(replies) == 4


@pytest.mark.parametrize("question", [f"question {n}" for n in range(25)])
def test_replies_are_40_to_120_words(question: str) -> None:
    assert 40 <= len(compose_reply(question, 0.5)) <= 120


async def test_streams_one_word_per_delta() -> None:
    drained = await drain(DemoProvider(token_delay_ms=0), ask("Tell me something."))

    assert drained.deltas[0] == drained.deltas[0].strip()
    assert all(d.startswith(" ") and " " not in d[1:] for d in drained.deltas[1:])
    assert drained.text.split() == compose_reply("Tell me something.", 0.4)


async def test_usage_is_exact_word_counts() -> None:
    request = sample_request()

    drained = await drain(DemoProvider(token_delay_ms=0), request)

    words_in = len(request.system.split()) + sum(len(m.content.split()) for m in request.messages)
    assert drained.usage.tokens_in == words_in
    assert drained.usage.tokens_out == len(drained.deltas)
    assert drained.usage.model == MODEL_NAME
    assert drained.usage.estimated is False


@pytest.mark.parametrize("max_tokens", [1, 3, 5, 12, 30, 60, 100])
async def test_a_reply_cut_to_max_tokens_ends_on_a_whole_sentence(max_tokens: int) -> None:
    for temperature in MODES:
        for question in ("How should I plan my week?", "Is this worth it?", "hello"):
            request = ask(question, temperature=temperature, max_tokens=max_tokens)
            drained = await drain(DemoProvider(token_delay_ms=0), request)

            assert 0 < len(drained.deltas) <= max_tokens
            assert drained.usage.tokens_out == len(drained.deltas)
            assert drained.text.endswith((".", "?", "!")), drained.text
            whole = " ".join(compose_reply(question, temperature))
            # Whole sentences of the full reply, or one short reply when none fits.
            sentences = re.split(r"(?<=[.?!])\s+", drained.text)
            assert all(s in whole for s in sentences) or len(sentences) == 1


@pytest.mark.parametrize("temperature", list(MODES))
def test_replies_read_as_the_mode_and_pick_up_the_question(temperature: float) -> None:
    reply = " ".join(compose_reply("How do I keep my garden alive?", temperature))
    assert "“garden”" in reply
    assert reply.endswith("?")  # a closing question
    sentences = re.split(r"(?<=[.?!])\s+", reply)
    assert len(sentences) == len(set(sentences)) >= 3  # no sentence said twice
    others = {" ".join(compose_reply("How do I keep my garden alive?", t)) for t in MODES}
    assert len(others) == len(MODES)
    opening = sentences[0].lower()
    keywords = {
        "reflect": ("hear", "mirror", "stands out", "mention"),
        "advise": ("advice", "steps", "would do", "small"),
        "challenge": ("push back", "not sure", "premise", "case against"),
        "explore": ("explore", "angles", "doors", "wander"),
    }[MODES[temperature]]
    assert any(keyword in opening for keyword in keywords), opening


def test_one_question_to_the_next_gets_another_reply() -> None:
    questions = [f"Question number {n}: what now?" for n in range(50)]
    replies = [" ".join(compose_reply(q, 0.5)) for q in questions]
    assert len(set(replies)) >= 45
    assert all(a != b for a, b in zip(replies, replies[1:], strict=False))


async def test_the_delay_setting_spaces_the_words() -> None:
    request = ask("Go on.", max_tokens=6)

    slow_task = asyncio.create_task(drain(DemoProvider(token_delay_ms=30), request))
    await asyncio.sleep(0)  # the slow reply sends its first word, then waits
    fast = await drain(DemoProvider(token_delay_ms=0), request)
    slow = await slow_task

    assert all(gap >= 0.02 for gap in slow.gaps), slow.gaps  # a sleep lasts at least that
    # Without a delay the whole reply comes before the slow one's second word: it never waits.
    assert len(fast.deltas) == len(slow.deltas) == 5  # the whole sentence that fits in 6
    assert fast.arrivals[-1] < slow.arrivals[1]


async def test_check_and_aclose() -> None:
    provider = DemoProvider()

    assert await provider.check() is None
    await provider.aclose()
