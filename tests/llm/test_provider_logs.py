"""A provider request logs nothing at info level: the HTTP client libraries' per-request lines
(httpx2's "HTTP Request: POST ...", the SDKs' own, aiohttp's under them) are debug detail on the
hot path, and even at debug no line carries the API key."""

import io
import logging
from collections.abc import Iterator

import pytest

from kgents.llm.base import LLMProvider
from kgents.observability.logging import configure_logging
from tests.fakes import FakeReply
from tests.llm.conftest import ProviderCase
from tests.llm.streams import drain

pytestmark = pytest.mark.anyio


def configured(level: str) -> Iterator[io.StringIO]:
    root = logging.getLogger()
    previous = root.level
    output = io.StringIO()
    handler = configure_logging(level=level, fmt="text", stream=output)
    try:
        yield output
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


@pytest.fixture
def info_logs() -> Iterator[io.StringIO]:
    yield from configured("INFO")


@pytest.fixture
def debug_logs() -> Iterator[io.StringIO]:
    yield from configured("DEBUG")


async def test_a_provider_request_logs_nothing_at_info(
    provider: LLMProvider, info_logs: io.StringIO
) -> None:
    drained = await drain(provider)
    assert drained.error is None and drained.deltas
    logging.getLogger("kgents.llm").info("our own info lines stay")
    text = info_logs.getvalue()
    assert "HTTP Request:" not in text and "our own info lines stay" in text
    # Every line's logger is ours or the fake server's (uvicorn): no HTTP client library's.
    assert {line.split()[2] for line in text.splitlines()} <= {"kgents.llm", "uvicorn.access"}


async def test_at_debug_the_request_lines_are_there_as_debug(
    provider: LLMProvider, debug_logs: io.StringIO
) -> None:
    await drain(provider)
    lines = [line for line in debug_logs.getvalue().splitlines() if "HTTP Request:" in line]
    assert lines and all("DEBUG" in line and "INFO" not in line for line in lines)


async def test_no_line_carries_the_api_key_even_at_debug(
    case: ProviderCase, provider: LLMProvider, debug_logs: io.StringIO
) -> None:
    await drain(provider)
    case.fake.reply = FakeReply(status=401)  # the fake echoes the key in its error body
    await drain(provider)
    await provider.check()

    text = debug_logs.getvalue()
    assert "HTTP Request:" in text
    assert case.key not in text


def test_their_warnings_pass_unchanged(info_logs: io.StringIO) -> None:
    logging.getLogger("openai._base_client").warning("retrying request")
    logging.getLogger("httpx_extra").info("not an HTTP client library")
    text = info_logs.getvalue()
    assert "WARNING" in text and "retrying request" in text
    assert "not an HTTP client library" in text
