"""The anthropic provider against a fake Anthropic Messages API over real HTTP."""

import socket

import pytest

from kgents.llm.anthropic import AnthropicProvider
from kgents.llm.base import TextDelta, estimate_request_tokens, estimate_tokens
from tests.fakes import Failure, FakeAnthropic, FakeReply
from tests.llm.conftest import ANTHROPIC_KEY, ANTHROPIC_MODEL
from tests.llm.streams import HISTORY, SYSTEM, drain, failure, sample_request

pytestmark = pytest.mark.anyio


async def test_streams_deltas_in_order_then_the_reported_usage(
    fake_anthropic: FakeAnthropic, anthropic_provider: AnthropicProvider
) -> None:
    fake_anthropic.reply = FakeReply(tokens=("Hel", "lo", " there"), input_tokens=30)

    drained = await drain(anthropic_provider)

    assert drained.error is None
    assert drained.deltas == ["Hel", "lo", " there"]
    assert drained.usage.tokens_in == 30
    assert drained.usage.tokens_out == 3
    assert drained.usage.model == ANTHROPIC_MODEL
    assert drained.usage.estimated is False


async def test_output_tokens_come_from_message_delta_and_input_counts_cache_reads(
    fake_anthropic: FakeAnthropic, anthropic_provider: AnthropicProvider
) -> None:
    fake_anthropic.reply = FakeReply(tokens=("a",), input_tokens=12, output_tokens=9)
    fake_anthropic.cache_read_input_tokens = 100

    drained = await drain(anthropic_provider)

    assert (drained.usage.tokens_in, drained.usage.tokens_out) == (112, 9)


async def test_first_delta_arrives_while_the_server_is_still_sending(
    fake_anthropic: FakeAnthropic, anthropic_provider: AnthropicProvider
) -> None:
    fake_anthropic.reply = FakeReply(tokens=("a", " b", " c", " d"), delay_seconds=0.15)

    stream = anthropic_provider.stream(sample_request())
    first = await anext(stream)
    assert first == TextDelta("a")
    assert not fake_anthropic.stream_requests[0].finished.is_set()
    rest = [item async for item in stream]

    assert fake_anthropic.stream_requests[0].finished.is_set()
    assert [item for item in rest if isinstance(item, TextDelta)] == [
        TextDelta(" b"),
        TextDelta(" c"),
        TextDelta(" d"),
    ]


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


async def test_usage_is_estimated_when_the_stream_reports_none(
    fake_anthropic: FakeAnthropic, anthropic_provider: AnthropicProvider
) -> None:
    fake_anthropic.reply = FakeReply(tokens=("one", " two", " three"), include_usage=False)

    drained = await drain(anthropic_provider)

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
        (413, "provider_bad_request", False),
    ],
)
async def test_http_errors_map_to_stable_codes(
    fake_anthropic: FakeAnthropic,
    anthropic_provider: AnthropicProvider,
    status: int,
    code: str,
    retryable: bool,
) -> None:
    fake_anthropic.reply = FakeReply(status=status)

    error = await failure(anthropic_provider)

    assert (error.code, error.retryable) == (code, retryable)
    assert str(status) in error.message
    # The fake echoes the key in its error message; it must not reach ours.
    assert ANTHROPIC_KEY not in error.message
    assert ANTHROPIC_KEY not in str(error)


async def test_refused_connection_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = AnthropicProvider(
        api_key=ANTHROPIC_KEY, base_url=f"http://127.0.0.1:{port}", model=ANTHROPIC_MODEL
    )
    try:
        error = await failure(provider)
        assert (error.code, error.retryable) == ("provider_unreachable", True)
        assert await provider.check() is False
    finally:
        await provider.aclose()


async def test_a_server_that_never_answers_times_out(
    fake_anthropic: FakeAnthropic, impatient_anthropic_provider: AnthropicProvider
) -> None:
    fake_anthropic.reply = FakeReply(failure="hang")

    error = await failure(impatient_anthropic_provider)

    assert (error.code, error.retryable) == ("provider_timeout", True)


async def test_a_stream_that_stalls_times_out_after_its_deltas(
    fake_anthropic: FakeAnthropic, impatient_anthropic_provider: AnthropicProvider
) -> None:
    fake_anthropic.reply = FakeReply(tokens=("a", " b", " c"), failure="stall", fail_after=2)

    drained = await drain(impatient_anthropic_provider)

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
    fake_anthropic: FakeAnthropic,
    anthropic_provider: AnthropicProvider,
    failure_kind: Failure,
    code: str,
    retryable: bool,
) -> None:
    fake_anthropic.reply = FakeReply(
        tokens=("a", " b", " c"),
        failure=failure_kind,
        fail_after=2,
    )

    drained = await drain(anthropic_provider)

    assert drained.deltas == ["a", " b"]
    assert not drained.usages
    assert drained.error is not None
    assert (drained.error.code, drained.error.retryable) == (code, retryable)


async def test_the_provider_recovers_after_a_failure(
    fake_anthropic: FakeAnthropic, anthropic_provider: AnthropicProvider
) -> None:
    fake_anthropic.queue(FakeReply(failure="drop", fail_after=1), FakeReply(status=529))

    assert (await drain(anthropic_provider)).error is not None
    assert (await drain(anthropic_provider)).error is not None
    drained = await drain(anthropic_provider)

    assert drained.error is None
    assert drained.usage.estimated is False


async def test_closing_the_stream_early_releases_the_connection(
    fake_anthropic: FakeAnthropic, anthropic_provider: AnthropicProvider
) -> None:
    fake_anthropic.reply = FakeReply(tokens=("a", " b", " c", " d"), delay_seconds=0.05)

    stream = anthropic_provider.stream(sample_request())
    assert await anext(stream) == TextDelta("a")
    await stream.aclose()

    assert not fake_anthropic.stream_requests[0].finished.is_set()
    fake_anthropic.reply = FakeReply()
    assert (await drain(anthropic_provider)).error is None


async def test_check_lists_models_without_generating(
    fake_anthropic: FakeAnthropic, anthropic_provider: AnthropicProvider
) -> None:
    assert await anthropic_provider.check() is True
    assert [(r.method, r.path) for r in fake_anthropic.requests] == [("GET", "/v1/models")]


@pytest.mark.parametrize("reply", [FakeReply(status=401), FakeReply(failure="hang")])
async def test_check_is_false_when_the_server_refuses_or_hangs(
    fake_anthropic: FakeAnthropic, impatient_anthropic_provider: AnthropicProvider, reply: FakeReply
) -> None:
    fake_anthropic.reply = reply

    assert await impatient_anthropic_provider.check() is False
