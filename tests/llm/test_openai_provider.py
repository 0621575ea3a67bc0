"""The openai provider against a fake OpenAI-compatible server over real HTTP."""

import asyncio
import socket
import time

import pytest

from kgents.llm.base import TextDelta, estimate_request_tokens, estimate_tokens
from kgents.llm.openai import OpenAIProvider
from tests.fakes import Failure, FakeOpenAI, FakeReply
from tests.llm.conftest import OPENAI_KEY, OPENAI_MODEL
from tests.llm.streams import HISTORY, SYSTEM, drain, failure, sample_request

pytestmark = pytest.mark.anyio


async def test_streams_deltas_in_order_then_the_reported_usage(
    fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    fake_openai.reply = FakeReply(tokens=("Hel", "lo", ",", " world"), input_tokens=42)

    drained = await drain(openai_provider)

    assert drained.error is None
    assert drained.deltas == ["Hel", "lo", ",", " world"]
    assert drained.usage.tokens_in == 42
    assert drained.usage.tokens_out == 4
    assert drained.usage.model == OPENAI_MODEL
    assert drained.usage.estimated is False


async def test_first_delta_arrives_while_the_server_is_still_sending(
    fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    fake_openai.reply = FakeReply(tokens=("a", " b", " c", " d"), delay_seconds=0.15)

    stream = openai_provider.stream(sample_request())
    first = await anext(stream)
    assert first == TextDelta("a")
    assert not fake_openai.stream_requests[0].finished.is_set()
    drained = [item async for item in stream]

    assert fake_openai.stream_requests[0].finished.is_set()
    assert [item for item in drained if isinstance(item, TextDelta)] == [
        TextDelta(" b"),
        TextDelta(" c"),
        TextDelta(" d"),
    ]


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
    fake_openai.reply = FakeReply(tokens=tokens, delay_seconds=0.005)

    started = time.monotonic()
    results = await asyncio.gather(*(drain(openai_provider) for _ in range(20)))
    elapsed = time.monotonic() - started

    assert all(r.error is None and r.text == "".join(tokens) for r in results)
    assert all(r.usage.tokens_out == 50 for r in results)
    # One stream takes 0.25 s; twenty one after the other would take 5 s.
    assert elapsed < 2.0


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


async def test_usage_is_estimated_when_the_server_reports_none(
    fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    fake_openai.reply = FakeReply(tokens=("one", " two", " three"), include_usage=False)

    drained = await drain(openai_provider)

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
        (400, "provider_bad_request", False),
        (404, "provider_bad_request", False),
    ],
)
async def test_http_errors_map_to_stable_codes(
    fake_openai: FakeOpenAI,
    openai_provider: OpenAIProvider,
    status: int,
    code: str,
    retryable: bool,
) -> None:
    fake_openai.reply = FakeReply(status=status)

    error = await failure(openai_provider)

    assert (error.code, error.retryable) == (code, retryable)
    assert str(status) in error.message
    # The fake echoes the key in its error message; it must not reach ours.
    assert OPENAI_KEY not in error.message
    assert OPENAI_KEY not in str(error)


async def test_refused_connection_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = OpenAIProvider(api_key=OPENAI_KEY, base_url=f"http://127.0.0.1:{port}/v1")
    try:
        error = await failure(provider)
        assert (error.code, error.retryable) == ("provider_unreachable", True)
        assert await provider.check() is False
    finally:
        await provider.aclose()


async def test_a_server_that_never_answers_times_out(
    fake_openai: FakeOpenAI, impatient_openai_provider: OpenAIProvider
) -> None:
    fake_openai.reply = FakeReply(failure="hang")

    error = await failure(impatient_openai_provider)

    assert (error.code, error.retryable) == ("provider_timeout", True)


async def test_a_stream_that_stalls_times_out_after_its_deltas(
    fake_openai: FakeOpenAI, impatient_openai_provider: OpenAIProvider
) -> None:
    fake_openai.reply = FakeReply(tokens=("a", " b", " c"), failure="stall", fail_after=2)

    drained = await drain(impatient_openai_provider)

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
    fake_openai: FakeOpenAI,
    openai_provider: OpenAIProvider,
    failure_kind: Failure,
    code: str,
    retryable: bool,
) -> None:
    fake_openai.reply = FakeReply(
        tokens=("a", " b", " c"),
        failure=failure_kind,
        fail_after=2,
    )

    drained = await drain(openai_provider)

    assert drained.deltas == ["a", " b"]
    assert not drained.usages
    assert drained.error is not None
    assert (drained.error.code, drained.error.retryable) == (code, retryable)
    assert drained.error.__cause__ is not None or failure_kind == "truncate"


async def test_the_provider_recovers_after_a_failure(
    fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    fake_openai.queue(FakeReply(failure="drop", fail_after=1), FakeReply(status=503))

    assert (await drain(openai_provider)).error is not None
    assert (await drain(openai_provider)).error is not None
    drained = await drain(openai_provider)

    assert drained.error is None
    assert drained.usage.estimated is False


async def test_closing_the_stream_early_releases_the_connection(
    fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    fake_openai.reply = FakeReply(tokens=("a", " b", " c", " d"), delay_seconds=0.05)

    stream = openai_provider.stream(sample_request())
    assert await anext(stream) == TextDelta("a")
    await stream.aclose()

    assert not fake_openai.stream_requests[0].finished.is_set()
    fake_openai.reply = FakeReply()
    assert (await drain(openai_provider)).error is None


async def test_check_lists_models_without_generating(
    fake_openai: FakeOpenAI, openai_provider: OpenAIProvider
) -> None:
    assert await openai_provider.check() is True
    assert [(r.method, r.path) for r in fake_openai.requests] == [("GET", "/v1/models")]


@pytest.mark.parametrize("reply", [FakeReply(status=401), FakeReply(failure="hang")])
async def test_check_is_false_when_the_server_refuses_or_hangs(
    fake_openai: FakeOpenAI, impatient_openai_provider: OpenAIProvider, reply: FakeReply
) -> None:
    fake_openai.reply = reply

    assert await impatient_openai_provider.check() is False
