"""The anthropic provider against a fake Anthropic Messages API over real HTTP: what only it
does (what every provider does is in ``test_provider_contract.py``)."""

import pytest

from kgents.llm.anthropic import AnthropicProvider
from tests.fakes import FakeAnthropic, FakeReply
from tests.llm.conftest import ANTHROPIC_KEY, ANTHROPIC_MODEL
from tests.llm.streams import HISTORY, SYSTEM, drain, sample_request

pytestmark = pytest.mark.anyio


async def test_output_tokens_come_from_message_delta_and_input_counts_cache_writes_and_reads(
    fake_anthropic: FakeAnthropic, anthropic_provider: AnthropicProvider
) -> None:
    fake_anthropic.reply = FakeReply(tokens=("a",), input_tokens=12, output_tokens=9)
    fake_anthropic.cache_creation_input_tokens = 30
    fake_anthropic.cache_read_input_tokens = 100

    drained = await drain(anthropic_provider)

    assert (drained.usage.tokens_in, drained.usage.tokens_out) == (142, 9)
    assert not drained.usage.estimated


async def test_request_carries_system_history_and_max_tokens_but_no_temperature(
    fake_anthropic: FakeAnthropic, anthropic_provider: AnthropicProvider
) -> None:
    await drain(anthropic_provider, sample_request(temperature=0.6, max_tokens=77))

    [request] = fake_anthropic.stream_requests
    assert request.method == "POST"
    assert request.credential == ANTHROPIC_KEY
    assert "anthropic-version" in request.headers
    body = request.json
    assert body["model"] == ANTHROPIC_MODEL
    assert body["stream"] is True
    assert body["system"] == SYSTEM
    assert body["max_tokens"] == 77
    assert body["messages"] == [{"role": m.role, "content": m.content} for m in HISTORY]
    # API version 2026-10-21 rejects sampling parameters.
    assert "temperature" not in body
