"""Fixtures of the provider tests: fake OpenAI and Anthropic servers shared by the whole run.

Each fake starts once (uvicorn in a thread on 127.0.0.1) and is reset before every test that
uses it, so tests script replies and read recorded requests without seeing each other's.
"""

from collections.abc import AsyncIterator, Iterator

import pytest

from kgents.llm.anthropic import AnthropicProvider
from kgents.llm.openai import OpenAIProvider
from tests.fakes import FakeAnthropic, FakeOpenAI

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
    anthropic_server.cache_read_input_tokens = 0
    return anthropic_server


def openai_provider_for(fake: FakeOpenAI, *, timeout_seconds: float) -> OpenAIProvider:
    return OpenAIProvider(
        api_key=OPENAI_KEY,
        base_url=fake.base_url,
        model=OPENAI_MODEL,
        timeout_seconds=timeout_seconds,
    )


def anthropic_provider_for(fake: FakeAnthropic, *, timeout_seconds: float) -> AnthropicProvider:
    return AnthropicProvider(
        api_key=ANTHROPIC_KEY,
        base_url=fake.base_url,
        model=ANTHROPIC_MODEL,
        timeout_seconds=timeout_seconds,
    )


@pytest.fixture
async def openai_provider(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
    provider = openai_provider_for(fake_openai, timeout_seconds=PROVIDER_TIMEOUT_SECONDS)
    yield provider
    await provider.aclose()


@pytest.fixture
async def impatient_openai_provider(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAIProvider]:
    """An openai provider with a 0.3 s timeout, for the tests that make it time out."""
    provider = openai_provider_for(fake_openai, timeout_seconds=IMPATIENT_TIMEOUT_SECONDS)
    yield provider
    await provider.aclose()


@pytest.fixture
async def anthropic_provider(fake_anthropic: FakeAnthropic) -> AsyncIterator[AnthropicProvider]:
    provider = anthropic_provider_for(fake_anthropic, timeout_seconds=PROVIDER_TIMEOUT_SECONDS)
    yield provider
    await provider.aclose()


@pytest.fixture
async def impatient_anthropic_provider(
    fake_anthropic: FakeAnthropic,
) -> AsyncIterator[AnthropicProvider]:
    """An anthropic provider with a 0.3 s timeout, for the tests that make it time out."""
    provider = anthropic_provider_for(fake_anthropic, timeout_seconds=IMPATIENT_TIMEOUT_SECONDS)
    yield provider
    await provider.aclose()
