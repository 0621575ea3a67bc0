"""``build_provider``: the configured provider, wired from ``Settings``."""

from typing import Any

import pytest

from kgents.config import Settings
from kgents.errors import ProviderError
from kgents.llm.anthropic import AnthropicProvider
from kgents.llm.demo import DemoProvider
from kgents.llm.factory import build_provider
from kgents.llm.openai import OpenAIProvider
from tests.fakes import FakeAnthropic, FakeOpenAI, FakeReply
from tests.llm.streams import drain

pytestmark = pytest.mark.anyio

_PROVIDER_ENV = (
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "KGENTS_OPENAI_API_KEY",
    "KGENTS_OPENAI_BASE_URL",
    "KGENTS_ANTHROPIC_API_KEY",
    "KGENTS_ANTHROPIC_BASE_URL",
    "KGENTS_LLM_MODEL",
    "KGENTS_LLM_PROVIDER",
)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROVIDER_ENV:
        monkeypatch.delenv(name, raising=False)


def settings(**values: Any) -> Settings:
    return Settings(**values)


async def test_demo_is_the_default_and_takes_its_delay() -> None:
    provider = build_provider(settings(demo_token_delay_ms=0))

    assert isinstance(provider, DemoProvider)
    assert provider.name == "demo"
    drained = await drain(provider)
    assert drained.error is None


async def test_openai_defaults_to_gpt_4o_mini() -> None:
    provider = build_provider(settings(llm_provider="openai", openai_api_key="sk-x"))
    try:
        assert isinstance(provider, OpenAIProvider)
        assert (provider.name, provider.model) == ("openai", "gpt-4o-mini")
    finally:
        await provider.aclose()


async def test_anthropic_defaults_to_claude_sonnet_4_6() -> None:
    provider = build_provider(settings(llm_provider="anthropic", anthropic_api_key="sk-ant-x"))
    try:
        assert isinstance(provider, AnthropicProvider)
        assert (provider.name, provider.model) == ("anthropic", "claude-sonnet-4-6")
    finally:
        await provider.aclose()


@pytest.mark.parametrize("name", ["openai", "anthropic"])
def test_a_hosted_provider_without_a_key_is_refused_at_start_up(name: str) -> None:
    with pytest.raises(ProviderError) as caught:
        build_provider(settings(llm_provider=name))

    assert caught.value.code == "provider_not_configured"
    assert caught.value.retryable is False


async def test_openai_uses_key_base_url_model_and_timeout(fake_openai: FakeOpenAI) -> None:
    provider = build_provider(
        settings(
            llm_provider="openai",
            openai_api_key="sk-factory",
            openai_base_url=fake_openai.base_url,
            llm_model="llama3",
            llm_timeout_seconds=0.3,
        )
    )
    try:
        assert await provider.check() is None
        assert (await drain(provider)).error is None
        request = fake_openai.stream_requests[-1]
        assert request.credential == "sk-factory"
        assert request.json["model"] == "llama3"

        fake_openai.reply = FakeReply(failure="hang")
        error = (await drain(provider)).error
        assert error is not None
        assert error.code == "provider_timeout"
    finally:
        await provider.aclose()


async def test_anthropic_uses_key_base_url_and_model(fake_anthropic: FakeAnthropic) -> None:
    provider = build_provider(
        settings(
            llm_provider="anthropic",
            anthropic_api_key="sk-ant-factory",
            anthropic_base_url=fake_anthropic.base_url,
            llm_model="claude-test",
        )
    )
    try:
        assert await provider.check() is None
        assert (await drain(provider)).error is None
        request = fake_anthropic.stream_requests[-1]
        assert request.credential == "sk-ant-factory"
        assert request.json["model"] == "claude-test"
    finally:
        await provider.aclose()


async def test_a_self_hosted_openai_server_needs_no_key(fake_openai: FakeOpenAI) -> None:
    provider = build_provider(
        settings(llm_provider="openai", openai_base_url=fake_openai.base_url, llm_model="m")
    )
    try:
        drained = await drain(provider)
        assert drained.error is None
        assert drained.usage.tokens_out > 0
    finally:
        await provider.aclose()
