"""A provider request logs nothing at info level: the HTTP client libraries' per-request lines
(httpx's "HTTP Request: POST ...", the SDKs' own) are debug detail on the hot path."""

import io
import logging
from collections.abc import Iterator

import pytest

from kgents.llm.base import LLMProvider
from kgents.observability.logging import configure_logging
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


async def test_at_debug_the_request_lines_are_there_as_debug(
    provider: LLMProvider, debug_logs: io.StringIO
) -> None:
    await drain(provider)
    lines = [line for line in debug_logs.getvalue().splitlines() if "HTTP Request:" in line]
    assert lines and all("DEBUG" in line and "INFO" not in line for line in lines)


def test_their_warnings_pass_unchanged(info_logs: io.StringIO) -> None:
    logging.getLogger("openai._base_client").warning("retrying request")
    logging.getLogger("httpx_extra").info("not an HTTP client library")
    text = info_logs.getvalue()
    assert "WARNING" in text and "retrying request" in text
    assert "not an HTTP client library" in text
