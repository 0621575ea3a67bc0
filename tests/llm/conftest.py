"""Fixtures of the provider tests: fake OpenAI and Anthropic servers shared by the whole run.

Each fake starts once (uvicorn in a thread on 127.0.0.1) and is reset before every test that
uses it, so tests script replies and read recorded requests without seeing each other's.
"""

from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import pytest

from kgents.llm.anthropic import AnthropicProvider
from kgents.llm.base import LLMProvider
from kgents.llm.openai import OpenAIProvider
from tests.fakes import FakeAnthropic, FakeLLMServer, FakeOpenAI

OPENAI_KEY = "sk-test-openai-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-0123456789abcdef"
OPENAI_MODEL = "gpt-test"
ANTHROPIC_MODEL = "claude-test"
# Generous for the streams that should succeed; short for the ones that should time out.
PROVIDER_TIMEOUT_SECONDS = 5.0
IMPATIENT_TIMEOUT_SECONDS = 0.3


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="session")
def anthropic_server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def fake_openai(openai_server: FakeOpenAI) -> FakeOpenAI:
    """The shared fake OpenAI server, reset: default reply, nothing queued or recorded."""
    openai_server.reset()
    return openai_server


@pytest.fixture
def fake_anthropic(anthropic_server: FakeAnthropic) -> FakeAnthropic:
    """The shared fake Anthropic server, reset: default reply, nothing queued or recorded."""
    anthropic_server.reset()
    anthropic_server.cache_creation_input_tokens = 0
    anthropic_server.cache_read_input_tokens = 0
    return anthropic_server


def openai_provider_for(base_url: str, *, timeout_seconds: float) -> OpenAIProvider:
    return OpenAIProvider(
        api_key=OPENAI_KEY, base_url=base_url, model=OPENAI_MODEL, timeout_seconds=timeout_seconds
    )


def anthropic_provider_for(base_url: str, *, timeout_seconds: float) -> AnthropicProvider:
    return AnthropicProvider(
        api_key=ANTHROPIC_KEY,
        base_url=base_url,
        model=ANTHROPIC_MODEL,
        timeout_seconds=timeout_seconds,
    )


@pytest.fixture
async def openai_provider(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
    provider = openai_provider_for(fake_openai.base_url, timeout_seconds=PROVIDER_TIMEOUT_SECONDS)
    yield provider
    await provider.aclose()


@pytest.fixture
async def anthropic_provider(fake_anthropic: FakeAnthropic) -> AsyncIterator[AnthropicProvider]:
    provider = anthropic_provider_for(
        fake_anthropic.base_url, timeout_seconds=PROVIDER_TIMEOUT_SECONDS
    )
    yield provider
    await provider.aclose()


@dataclass(frozen=True)
class ProviderCase:
    """One SDK provider and its fake server, for the behaviour every provider must share."""

    fake: FakeLLMServer
    key: str
    model: str
    build: Callable[..., LLMProvider]
    """``build(base_url, timeout_seconds=...)``: a provider with this case's key and model."""

    def provider(self, *, timeout_seconds: float = PROVIDER_TIMEOUT_SECONDS) -> LLMProvider:
        return self.build(self.fake.base_url, timeout_seconds=timeout_seconds)


@pytest.fixture(params=["openai", "anthropic"])
def case(request: pytest.FixtureRequest) -> ProviderCase:
    """Each SDK provider in turn, with its fake server reset."""
    if request.param == "openai":
        fake: FakeLLMServer = request.getfixturevalue("fake_openai")
        return ProviderCase(fake, OPENAI_KEY, OPENAI_MODEL, openai_provider_for)
    fake = request.getfixturevalue("fake_anthropic")
    return ProviderCase(fake, ANTHROPIC_KEY, ANTHROPIC_MODEL, anthropic_provider_for)


@pytest.fixture
async def provider(case: ProviderCase) -> AsyncIterator[LLMProvider]:
    provider = case.provider()
    yield provider
    await provider.aclose()


@pytest.fixture
async def impatient_provider(case: ProviderCase) -> AsyncIterator[LLMProvider]:
    """The case's provider with a 0.3 s timeout, for the tests that make it time out."""
    provider = case.provider(timeout_seconds=IMPATIENT_TIMEOUT_SECONDS)
    yield provider
    await provider.aclose()
