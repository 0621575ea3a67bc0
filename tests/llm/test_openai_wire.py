"""The openai provider reads the server-sent events itself: the wire cases the fake does not send.

Each stream here is scripted byte for byte (``tests.llm.scripted``). Where the SDK's own parser
(``ChatCompletionChunk`` per event, what the provider used before) accepts a stream, the
provider must produce the same deltas and usage from it.
"""

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest

from kgents.llm.base import TextDelta, estimate_request_tokens, estimate_tokens
from kgents.llm.openai import OpenAIProvider
from tests.llm.conftest import OPENAI_KEY, OPENAI_MODEL, PROVIDER_TIMEOUT_SECONDS
from tests.llm.scripted import Script, ScriptedServer
from tests.llm.streams import drain, failure, sample_request

pytestmark = pytest.mark.anyio

TOKENS = ("Hé", "llo", ", ", "日本", " 🙂", "!")


def payload(
    content: str | None = None,
    *,
    finish: str | None = None,
    index: int = 0,
    usage: dict[str, Any] | None = None,
    choices: bool = True,
) -> dict[str, Any]:
    """A ``chat.completion.chunk`` as OpenAI spells it."""
    delta = {} if content is None else {"content": content}
    body: dict[str, Any] = {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": OPENAI_MODEL,
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]
        if choices
        else [],
        "usage": usage,
    }
    return body


def event(body: object, *, eol: bytes = b"\n") -> bytes:
    data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode()
    return b"data: " + data + eol + eol


def reply_events(
    tokens: tuple[str, ...] = TOKENS, *, eol: bytes = b"\n", usage: bool = True
) -> list[bytes]:
    """A whole successful stream, one item per event: role, tokens, finish, usage, [DONE]."""
    events = [event({**payload(""), "choices": [_role_choice()]}, eol=eol)]
    events += [event(payload(token), eol=eol) for token in tokens]
    events.append(event(payload(finish="stop"), eol=eol))
    if usage:
        counts = {"prompt_tokens": 13, "completion_tokens": len(tokens), "total_tokens": 19}
        events.append(event(payload(choices=False, usage=counts), eol=eol))
    events.append(b"data: [DONE]" + eol + eol)
    return events


def _role_choice() -> dict[str, Any]:
    delta = {"role": "assistant", "content": ""}
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}


def bytewise(parts: list[bytes]) -> tuple[bytes, ...]:
    """The same body, one byte a send (every event, line and UTF-8 sequence cut somewhere)."""
    body = b"".join(parts)
    return tuple(body[i : i + 1] for i in range(len(body)))


@pytest.fixture(scope="module")
def scripted_server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as server:
        yield server


@pytest.fixture
def server(scripted_server: ScriptedServer) -> ScriptedServer:
    scripted_server.scripts.clear()
    scripted_server.clients.clear()
    return scripted_server


@pytest.fixture
async def provider(server: ScriptedServer) -> AsyncIterator[OpenAIProvider]:
    provider = OpenAIProvider(
        api_key=OPENAI_KEY,
        base_url=server.base_url,
        model=OPENAI_MODEL,
        timeout_seconds=PROVIDER_TIMEOUT_SECONDS,
    )
    yield provider
    await provider.aclose()


async def sdk_reading(server: ScriptedServer) -> tuple[list[str], tuple[int, int] | None]:
    """Deltas and usage of the next scripted stream as the SDK's ``ChatCompletionChunk``s say."""
    client = openai.AsyncOpenAI(api_key=OPENAI_KEY, base_url=server.base_url, max_retries=0)
    deltas: list[str] = []
    usage: tuple[int, int] | None = None
    try:
        chunks = await client.chat.completions.create(
            model=OPENAI_MODEL,
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in chunks:
            if chunk.usage is not None:
                usage = (chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            deltas += [c.delta.content for c in chunk.choices if c.index == 0 and c.delta.content]
    finally:
        await client.close()
    return deltas, usage


SPELLINGS = {
    "one event a send": tuple(reply_events()),
    "whole body in one send": (b"".join(reply_events()),),
    "one byte a send": bytewise(reply_events()),
    "CRLF, one byte a send": bytewise(reply_events(eol=b"\r\n")),
    "bare CR, one byte a send": bytewise(reply_events(eol=b"\r")),
    "CRLF cut between CR and LF": tuple(
        part for e in reply_events(eol=b"\r\n") for part in (e[:-1], e[-1:])
    ),
    "keep-alive comments between events": tuple(
        part for e in reply_events() for part in (b": keep-alive\n\n", e)
    ),
    "comments, ids, retry, named events, data without a space": tuple(
        b": note\nid: 1\nretry: 3000\nevent: chunk\ndata:" + e[len(b"data: ") :]
        for e in reply_events()
    ),
    "JSON spread over two data lines": tuple(
        e.replace(b'"object"', b'\ndata: "object"', 1) for e in reply_events()
    ),
    "JSON spread over two data lines, CRLF, one byte a send": bytewise(
        [e.replace(b'"object"', b'\r\ndata: "object"', 1) for e in reply_events(eol=b"\r\n")]
    ),
}


@pytest.mark.parametrize("spelling", list(SPELLINGS))
async def test_every_spelling_of_the_events_reads_like_the_sdk(
    server: ScriptedServer, provider: OpenAIProvider, spelling: str
) -> None:
    server.queue(Script(SPELLINGS[spelling]), Script(SPELLINGS[spelling]))

    drained = await drain(provider)
    sdk_deltas, sdk_usage = await sdk_reading(server)

    assert drained.error is None
    assert drained.deltas == list(TOKENS)
    assert drained.deltas == sdk_deltas
    assert (drained.usage.tokens_in, drained.usage.tokens_out) == sdk_usage == (13, len(TOKENS))
    assert drained.usage.estimated is False


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["LF", "CRLF", "CR"])
async def test_an_event_is_handed_on_as_soon_as_its_blank_line_arrives(
    server: ScriptedServer, provider: OpenAIProvider, eol: bytes
) -> None:
    # The server sends one event, then nothing more until the client leaves.
    server.queue(Script((event(payload("a"), eol=eol),), hold_open=True))

    stream = provider.stream(sample_request())
    try:
        async with asyncio.timeout(PROVIDER_TIMEOUT_SECONDS / 2):
            assert await anext(stream) == TextDelta("a")
    finally:
        await stream.aclose()


async def test_only_the_first_choice_is_read(
    server: ScriptedServer, provider: OpenAIProvider
) -> None:
    other = [event(payload(f"other{i}", index=1)) for i in range(2)]
    events = reply_events(("a", " b"))
    server.queue(Script((*other, *events)), Script((*other, *events)))

    drained = await drain(provider)

    assert drained.deltas == ["a", " b"]
    assert drained.deltas == (await sdk_reading(server))[0]


async def test_events_without_data_are_ignored(
    server: ScriptedServer, provider: OpenAIProvider
) -> None:
    events = reply_events(("a", " b"))
    server.queue(Script((b"id: 1\n\n", b"event: ping\n\n", *events)))

    drained = await drain(provider)

    assert drained.error is None
    assert drained.deltas == ["a", " b"]


async def test_a_reply_without_done_is_complete_once_finished(
    server: ScriptedServer, provider: OpenAIProvider
) -> None:
    server.queue(Script(tuple(reply_events(("a", " b"))[:-1])))

    drained = await drain(provider)

    assert drained.error is None
    assert drained.deltas == ["a", " b"]
    assert drained.usage.tokens_out == 2


async def test_done_without_a_finish_reason_is_a_truncated_reply(
    server: ScriptedServer, provider: OpenAIProvider
) -> None:
    server.queue(Script((event(payload("a")), b"data: [DONE]\n\n")))

    error = await failure(provider)

    assert (error.code, error.retryable) == ("provider_error", False)
    assert "ended before the reply was complete" in error.message


async def test_unusable_usage_is_estimated(
    server: ScriptedServer, provider: OpenAIProvider
) -> None:
    events = reply_events(("one", " two"), usage=False)
    odd_usage = event(payload(choices=False, usage={"prompt_tokens": "13"}))
    server.queue(Script((*events[:-1], odd_usage, events[-1])))

    drained = await drain(provider)

    assert drained.error is None
    assert drained.usage.estimated is True
    assert drained.usage.tokens_in == estimate_request_tokens(sample_request())
    assert drained.usage.tokens_out == estimate_tokens("one two")


@pytest.mark.parametrize(
    ("error", "code", "retryable"),
    [
        ({"message": "Slow down.", "type": "rate_limit_error"}, "provider_rate_limited", True),
        ({"message": "Overloaded.", "type": "server_error"}, "provider_unavailable", True),
        ({"message": "No.", "type": "invalid_request_error"}, "provider_bad_request", False),
        ({"message": "Huh.", "type": "something_new"}, "provider_error", False),
        ("a bare string", "provider_error", False),
    ],
)
async def test_error_events_map_like_the_sdk_errors_did(
    server: ScriptedServer,
    provider: OpenAIProvider,
    error: object,
    code: str,
    retryable: bool,
) -> None:
    server.queue(Script((event(payload("a")), event({"error": error}), event(payload("never")))))

    drained = await drain(provider)

    assert drained.deltas == ["a"]
    assert drained.error is not None
    assert (drained.error.code, drained.error.retryable) == (code, retryable)
    assert drained.error.__cause__ is not None


async def test_an_error_event_never_carries_the_api_key(
    server: ScriptedServer, provider: OpenAIProvider
) -> None:
    message = f"Incorrect API key provided: {OPENAI_KEY}."
    for error_type in ("server_error", "authentication_error"):
        server.queue(Script((event({"error": {"message": message, "type": error_type}}),)))

        error = await failure(provider)

        assert OPENAI_KEY not in error.message
        assert OPENAI_KEY not in str(error)


@pytest.mark.parametrize(
    "bad",
    [
        event([1, 2, 3]),
        event(b'"just a string"'),
        event(payload() | {"choices": [{"index": 0, "delta": {"content": 42}}]}),
        event(payload() | {"choices": ["not an object"]}),
        b"data: \n\n",
    ],
    ids=["array", "string", "content not text", "choice not an object", "empty data"],
)
async def test_malformed_events_fail_the_stream(
    server: ScriptedServer, provider: OpenAIProvider, bad: bytes
) -> None:
    server.queue(Script((event(payload("a")), bad, *reply_events(("b",)))))

    drained = await drain(provider)

    assert drained.deltas == ["a"]
    assert drained.error is not None
    assert (drained.error.code, drained.error.retryable) == ("provider_error", False)


async def test_the_connection_is_reused_after_a_complete_reply(
    server: ScriptedServer, provider: OpenAIProvider
) -> None:
    server.queue(Script(tuple(reply_events())), Script(tuple(reply_events())))

    assert (await drain(provider)).error is None
    assert (await drain(provider)).error is None

    first, second = server.clients
    assert first == second  # same client port: the body was read to its end after [DONE]


async def test_a_server_that_keeps_the_response_open_after_done_does_not_hold_the_reply(
    server: ScriptedServer,
) -> None:
    server.queue(Script(tuple(reply_events()), hold_open=True), Script(tuple(reply_events())))
    # An hour's timeout: the reply can only end at [DONE], not when the timeout gives up.
    provider = OpenAIProvider(
        api_key=OPENAI_KEY, base_url=server.base_url, model=OPENAI_MODEL, timeout_seconds=3600
    )
    try:
        drained = await drain(provider)
        assert drained.error is None
        assert drained.usage.tokens_out == len(TOKENS)
        assert (await drain(provider)).error is None  # the held connection was given up
    finally:
        await provider.aclose()
