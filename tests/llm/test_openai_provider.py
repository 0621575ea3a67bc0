"""The openai provider against a fake OpenAI-compatible server over real HTTP: what only it
does (what every provider does is in ``test_provider_contract.py``; the wire format in
``test_openai_wire.py``)."""

import asyncio

import pytest

from kgents.llm.openai import OpenAIProvider
from tests.fakes import FakeOpenAI, FakeReply
from tests.llm.conftest import OPENAI_KEY, OPENAI_MODEL
from tests.llm.streams import HISTORY, SYSTEM, drain, sample_request

pytestmark = pytest.mark.anyio


async def test_deltas_follow_the_pace_of_the_server(
    fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    fake_openai.reply = FakeReply(tokens=("a", " b", " c"), delay_seconds=0.1)

    drained = await drain(openai_provider)

    # The fake sends token i no earlier than i * 0.1 s after the request arrived.
    assert [offset >= 0.1 * i - 0.02 for i, offset in enumerate(drained.offsets)] == [True] * 3


async def test_many_streams_run_concurrently(
    fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    tokens = tuple(f" w{i}" for i in range(50))
    fake_openai.reply = FakeReply(tokens=tokens, delay_seconds=0.02)

    results = await asyncio.gather(*(drain(openai_provider) for _ in range(20)))

    assert all(r.error is None and r.text == "".join(tokens) for r in results)
    assert all(r.usage.tokens_out == 50 for r in results)
    # They overlap: every stream had its first token before any had its last (one after the
    # other, each would start after the previous one ended).
    assert max(r.arrivals[0] for r in results) < min(r.arrivals[-1] for r in results)


async def test_request_carries_system_history_and_sampling_parameters(
    fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    await drain(openai_provider, sample_request(temperature=0.6, max_tokens=77))

    [request] = fake_openai.stream_requests
    assert request.method == "POST"
    assert request.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    body = request.json
    assert body["model"] == OPENAI_MODEL
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0.6
    assert body["max_tokens"] == 77
    assert body["messages"] == [
        {"role": "system", "content": SYSTEM},
        *({"role": m.role, "content": m.content} for m in HISTORY),
    ]
