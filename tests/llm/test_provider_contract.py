"""What every SDK provider does, each against its fake server over real HTTP.

Each test runs once for the openai and once for the anthropic provider (the ``case`` fixture);
what only one of them does is tested in ``test_<provider>_provider.py``.
"""

import asyncio
import socket
from collections.abc import AsyncGenerator

import pytest

from kgents.llm.base import LLMProvider, TextDelta, estimate_request_tokens, estimate_tokens
from tests.fakes import Failure, FakeReply
from tests.llm.conftest import ProviderCase
from tests.llm.streams import drain, failure, sample_request

pytestmark = pytest.mark.anyio


async def test_streams_deltas_in_order_then_the_reported_usage(
    case: ProviderCase, provider: LLMProvider
) -> None:
    case.fake.reply = FakeReply(tokens=("Hel", "lo", ",", " world"), input_tokens=42)

    drained = await drain(provider)

    assert drained.error is None
    assert drained.deltas == ["Hel", "lo", ",", " world"]
    assert drained.usage.tokens_in == 42
    assert drained.usage.tokens_out == 4
    assert drained.usage.model == case.model
    assert drained.usage.estimated is False


async def test_first_delta_arrives_while_the_server_is_still_sending(
    case: ProviderCase, provider: LLMProvider
) -> None:
    case.fake.reply = FakeReply(tokens=("a", " b", " c", " d"), delay_seconds=0.15)

    stream = provider.stream(sample_request())
    first = await anext(stream)
    assert first == TextDelta("a")
    assert not case.fake.stream_requests[0].finished.is_set()
    rest = [item async for item in stream]

    assert case.fake.stream_requests[0].finished.is_set()
    assert [item for item in rest if isinstance(item, TextDelta)] == [
        TextDelta(" b"),
        TextDelta(" c"),
        TextDelta(" d"),
    ]


async def test_usage_is_estimated_when_the_server_reports_none(
    case: ProviderCase, provider: LLMProvider
) -> None:
    case.fake.reply = FakeReply(tokens=("one", " two", " three"), include_usage=False)

    drained = await drain(provider)

    assert drained.error is None
    assert drained.usage.estimated is True
    assert drained.usage.tokens_in == estimate_request_tokens(sample_request())
    assert drained.usage.tokens_out == estimate_tokens("one two three")


@pytest.mark.parametrize(
    ("status", "code", "retryable"),
    [
        (401, "provider_auth_failed", False),
        (403, "provider_auth_failed", False),
        (429, "provider_rate_limited", True),
        (500, "provider_unavailable", True),
        (503, "provider_unavailable", True),
        (529, "provider_unavailable", True),
        (400, "provider_bad_request", False),
        (404, "provider_bad_request", False),
        (413, "provider_bad_request", False),
    ],
)
async def test_http_errors_map_to_stable_codes(
    case: ProviderCase, provider: LLMProvider, status: int, code: str, retryable: bool
) -> None:
    case.fake.reply = FakeReply(status=status)

    error = await failure(provider)

    assert (error.code, error.retryable) == (code, retryable)
    assert str(status) in error.message
    # The fake echoes the key in its error message; it must not reach ours.
    assert case.key not in error.message
    assert case.key not in str(error)


async def test_refused_connection_is_unreachable(case: ProviderCase) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = case.build(f"http://127.0.0.1:{port}/v1", timeout_seconds=5.0)
    try:
        error = await failure(provider)
        assert (error.code, error.retryable) == ("provider_unreachable", True)
        assert await provider.check() == error.message  # why, in one line
    finally:
        await provider.aclose()


async def test_a_server_that_hangs_up_without_answering_is_unreachable(
    case: ProviderCase,
) -> None:
    # aiohttp reports this as ServerDisconnectedError, which the openai SDK's transport wraps
    # as a connect timeout; it is a lost connection.
    async def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    provider = case.build(f"http://127.0.0.1:{port}/v1", timeout_seconds=5.0)
    try:
        error = await failure(provider)
        assert (error.code, error.retryable) == ("provider_unreachable", True)
        assert await provider.check() == error.message
    finally:
        await provider.aclose()
        server.close()
        await server.wait_closed()


async def test_a_server_that_never_answers_times_out(
    case: ProviderCase, impatient_provider: LLMProvider
) -> None:
    case.fake.reply = FakeReply(failure="hang")

    error = await failure(impatient_provider)

    assert (error.code, error.retryable) == ("provider_timeout", True)


async def test_a_stream_that_stalls_times_out_after_its_deltas(
    case: ProviderCase, impatient_provider: LLMProvider
) -> None:
    case.fake.reply = FakeReply(tokens=("a", " b", " c"), failure="stall", fail_after=2)

    drained = await drain(impatient_provider)

    assert drained.deltas == ["a", " b"]
    assert drained.error is not None
    assert (drained.error.code, drained.error.retryable) == ("provider_timeout", True)


@pytest.mark.parametrize(
    ("failure_kind", "code", "retryable"),
    [
        ("drop", "provider_error", False),
        ("garbage", "provider_error", False),
        ("truncate", "provider_error", False),
        ("error_event", "provider_unavailable", True),
    ],
)
async def test_failures_mid_stream_keep_the_deltas_already_sent(
    case: ProviderCase,
    provider: LLMProvider,
    failure_kind: Failure,
    code: str,
    retryable: bool,
) -> None:
    case.fake.reply = FakeReply(tokens=("a", " b", " c"), failure=failure_kind, fail_after=2)

    drained = await drain(provider)

    assert drained.deltas == ["a", " b"]
    assert not drained.usages
    assert drained.error is not None
    assert (drained.error.code, drained.error.retryable) == (code, retryable)
    assert drained.error.__cause__ is not None or failure_kind == "truncate"


async def test_the_provider_recovers_after_a_failure(
    case: ProviderCase, provider: LLMProvider
) -> None:
    case.fake.queue(FakeReply(failure="drop", fail_after=1), FakeReply(status=503))

    assert (await drain(provider)).error is not None
    assert (await drain(provider)).error is not None
    drained = await drain(provider)

    assert drained.error is None
    assert drained.usage.estimated is False


async def test_closing_the_stream_early_releases_the_connection(
    case: ProviderCase, provider: LLMProvider
) -> None:
    case.fake.reply = FakeReply(tokens=("a", " b", " c", " d"), delay_seconds=0.05)

    stream = provider.stream(sample_request())
    assert isinstance(stream, AsyncGenerator)
    assert await anext(stream) == TextDelta("a")
    await stream.aclose()

    assert not case.fake.stream_requests[0].finished.is_set()
    case.fake.reply = FakeReply()
    assert (await drain(provider)).error is None


async def test_check_lists_models_without_generating(
    case: ProviderCase, provider: LLMProvider
) -> None:
    assert await provider.check() is None
    assert [(r.method, r.path) for r in case.fake.requests] == [("GET", "/v1/models")]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (FakeReply(status=401), "rejected the credentials (HTTP 401)"),
        (FakeReply(failure="hang"), "did not answer in time"),
    ],
)
async def test_check_says_why_when_the_server_refuses_or_hangs(
    case: ProviderCase, impatient_provider: LLMProvider, reply: FakeReply, reason: str
) -> None:
    case.fake.reply = reply

    said = await impatient_provider.check()
    assert said is not None and reason in said and "\n" not in said
