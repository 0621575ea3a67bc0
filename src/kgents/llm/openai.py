"""The ``openai`` provider: any OpenAI-compatible chat completions server (OpenAI, vLLM, Ollama,
llama.cpp server), streamed with the official SDK.

The request goes out on the SDK's HTTP client (its aiohttp transport, timeouts and connection
pool) with the headers the SDK sends (authentication, user agent, its platform headers), taken
from the SDK once, and a plain JSON body; an error status becomes the SDK's ``APIStatusError``.
Building each request through the SDK (``client.post``: its request options, header merge and
URL preparation) cost more CPU than the rest of the request start (``bench/RESULTS.md``), and
``chat.completions.create`` nearly twice that again.

The body is read raw: each ``data:`` event is parsed with ``orjson.loads`` (a third of
``json.loads``' CPU on these payloads) and only the fields used here are read. Letting the SDK
build a ``ChatCompletionChunk`` model for every token cost about four times the CPU of the whole
parse. What is read: the text of ``choices[0].delta.content``,
the ``finish_reason`` that says the reply is complete, an ``{"error": ...}`` event (mapped like
the SDK's own in-stream error) and ``[DONE]``.

Usage comes from the server's own final report (``stream_options.include_usage``: the last chunk
has empty ``choices`` and a ``usage``). Servers that send none get an estimate, labelled as such.

The SDK's own retries are off (``max_retries=0``): a retry with back-off can hold a turn for many
seconds before the first token, and every failure already reaches the caller with a ``retryable``
flag, so the decision to try again stays with the caller.

The SDK's HTTP transport is aiohttp (``openai.DefaultAioHttpClient``) rather than its default
httpx2/httpcore/anyio stack: in a same-run A/B (``bench/bench_streaming.py``, 64 streams x 5 ms)
kgents' CPU per token fell from ~280 to ~213 us and tokens/s vs direct rose from 0.26 to 0.33;
at one stream the added time to first token fell from 9-10 to 7.5 ms.
"""

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from functools import partial
from typing import Any

import httpx2
import openai
import orjson

from kgents.errors import ProviderError
from kgents.llm import errors
from kgents.llm.base import GenerationRequest, StreamItem, TextDelta, reply_usage
from kgents.llm.sse import ErrorEvent, SSEData, open_body

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
CHECK_TIMEOUT_SECONDS = 5.0
DRAIN_SECONDS = 0.1
"""How long to read on after ``[DONE]`` for the end of the body (as the SDK does)."""
_NAME = "openai"


class OpenAIProvider:
    """Streams chat completions from an OpenAI-compatible server."""

    name = _NAME

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        model: str | None = None,
        timeout_seconds: float = 60.0,
    ) -> None:
        self.model = model or DEFAULT_MODEL
        self._api_key = api_key
        self._check_timeout = min(CHECK_TIMEOUT_SECONDS, timeout_seconds)
        self._http = openai.DefaultAioHttpClient(timeout=timeout_seconds)
        self._client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url or DEFAULT_BASE_URL,
            timeout=timeout_seconds,
            max_retries=0,
            http_client=self._http,
        )
        self._url = self._client.base_url.join("chat/completions")
        self._headers: dict[str, str] | None = None  # read from the SDK on the event loop

    async def stream(self, request: GenerationRequest) -> AsyncGenerator[StreamItem, None]:
        """Yield each text delta as the server sends it, then one ``Usage``.

        Raises ``ProviderError`` (codes in ``kgents.llm.errors``), also after some deltas.
        """
        reply = _Reply()
        failed = partial(self._translate, started=False)
        async with open_body(self._start(request), failed) as chunks:
            events = SSEData()
            done = False
            try:
                async for chunk in chunks:
                    for data in events.feed(chunk):
                        if data.startswith(b"[DONE]"):
                            done = True
                            break
                        text = reply.take(data)
                        if text:
                            yield TextDelta(text)
                    if done:
                        break
            except Exception as exc:
                raise self._translate(exc, started=True) from exc
            if done:
                await _drain(chunks)

        if not reply.finished:
            raise errors.malformed(_NAME, "the stream ended before the reply was complete")
        tokens_in, tokens_out = reply.reported_usage() or (None, None)
        yield reply_usage(
            request,
            "".join(reply.produced),
            model=self.model,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
        )

    async def _start(self, request: GenerationRequest) -> httpx2.Response:
        """Send the request; the response's body is left unread (the caller closes it)."""
        if self._headers is None:
            self._headers = _sdk_headers(self._client)
        body = orjson.dumps(request_body(self.model, request))  # compact UTF-8, as the SDK
        sent = self._http.build_request("POST", self._url, content=body, headers=self._headers)
        response = await self._http.send(sent, stream=True)
        if not response.is_success:  # as the SDK: any other status is its error
            try:
                await response.aread()
            finally:
                await response.aclose()
            raise _status_error(response)
        return response

    async def check(self) -> str | None:
        """Ready when ``GET /models`` answers within a few seconds; else the failure's message.

        Listing models spends no tokens, yet proves the server is reachable and accepts the key;
        every OpenAI-compatible server (vLLM, Ollama, llama.cpp) serves it.
        """
        try:
            await self._client.models.list(timeout=self._check_timeout)
        except Exception as exc:
            return self._translate(exc, started=False).message
        return None

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.close()

    def _translate(self, exc: Exception, *, started: bool) -> ProviderError:
        return errors.from_exception(
            _NAME, exc, started=started, secret=self._api_key, sdk=_SDK_ERRORS
        )


_SDK_ERRORS = errors.SDKErrors(
    timeout=openai.APITimeoutError,
    connection=openai.APIConnectionError,
    status=openai.APIStatusError,
    in_stream=(ErrorEvent, openai.APIError),
)


class _Reply:
    """What the events of one reply said so far: texts, whether it finished, its usage."""

    __slots__ = ("finished", "produced", "usage")

    def __init__(self) -> None:
        self.produced: list[str] = []
        self.finished = False
        self.usage: object = None

    def take(self, data: bytes) -> str | None:
        """Read one ``data:`` payload; the text it adds to the reply, if any.

        Raises ``ErrorEvent`` for an error event, ``ValueError`` when the payload is not a JSON
        object or a delta's content is not text.
        """
        body: Any = orjson.loads(data)
        if not isinstance(body, dict):
            raise ValueError("a stream event that is not a JSON object")
        if body.get("error"):
            raise ErrorEvent(body["error"])
        usage = body.get("usage")
        if usage is not None:
            self.usage = usage
        text: str | None = None
        for choice in body.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            content = delta.get("content") if delta else None
            if content:
                if not isinstance(content, str):
                    raise ValueError("a delta whose content is not text")
                self.produced.append(content)
                text = content if text is None else text + content
            if choice.get("finish_reason") is not None:
                self.finished = True
        return text

    def reported_usage(self) -> tuple[int, int] | None:
        """``(prompt tokens, completion tokens)`` as the server reported them, if it did."""
        usage = self.usage
        if not isinstance(usage, Mapping):
            return None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if type(prompt) is not int or type(completion) is not int:
            return None
        return prompt, completion


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what follows ``[DONE]`` (normally only the end of the body) for a short while, so the
    HTTP/1.1 connection goes back to the pool instead of being closed."""
    with contextlib.suppress(TimeoutError, *errors.TRANSPORT_ERRORS):
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in chunks:
                pass


def _sdk_headers(client: openai.AsyncOpenAI) -> dict[str, str]:
    """The headers the SDK sends with a request of ``client`` (``max_retries=0``: no retry)."""
    headers = {
        name: value
        for name, value in {**client.default_headers, **client.auth_headers}.items()
        if isinstance(value, str)  # the SDK leaves out its ``Omit`` ones
    }
    headers["x-stainless-retry-count"] = "0"
    read_timeout = httpx2.Timeout(client.timeout).read
    if read_timeout is not None:
        headers["x-stainless-read-timeout"] = str(read_timeout)
    return headers


def _status_error(response: httpx2.Response) -> openai.APIStatusError:
    """The SDK's exception for an error response whose body was read."""
    text = response.text.strip()
    body: object = text
    with contextlib.suppress(ValueError):
        body = orjson.loads(text)
    if isinstance(body, Mapping):
        body = body.get("error", body)
    return openai.APIStatusError(
        f"Error code: {response.status_code}", response=response, body=body
    )


def request_body(model: str, request: GenerationRequest) -> dict[str, Any]:
    """The chat completions request for ``request``: streamed, with the usage at the end."""
    return {
        "model": model,
        "messages": _messages(request),
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _messages(request: GenerationRequest) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": request.system}] if request.system else []
    messages.extend({"role": m.role, "content": m.content} for m in request.messages)
    return messages
