"""A fake OpenAI-compatible server: ``POST /v1/chat/completions`` (streaming), ``GET /v1/models``.

The stream is what OpenAI sends: ``data:`` lines of ``chat.completion.chunk`` objects, a first
chunk with the role, one chunk per token, a chunk with ``finish_reason``, then (only when the
request asked for ``stream_options.include_usage``) a chunk with empty ``choices`` and the usage,
then ``data: [DONE]``.
"""

from collections.abc import Callable, Mapping
from typing import Any

from .llm_server import TEXT, FakeLLMServer, FakeReply, RecordedRequest, sse, sse_renderer

_ERROR_TYPES = {
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
}


class FakeOpenAI(FakeLLMServer):
    """An OpenAI-compatible server; ``base_url`` ends in ``/v1`` as the SDK expects."""

    stream_path = "/v1/chat/completions"
    models_path = "/v1/models"

    @property
    def base_url(self) -> str:
        """The root URL plus ``/v1``, as the OpenAI SDK expects."""
        return f"{self.url}/v1"

    def _chunk(
        self, request: RecordedRequest, choices: list[dict[str, Any]], **extra: Any
    ) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": f"chatcmpl-fake-{request.number}",
            "object": "chat.completion.chunk",
            "created": 1_700_000_000,
            "model": request.json.get("model", self.model),
            "system_fingerprint": "fp_fake",
            "choices": choices,
        }
        if _wants_usage(request):
            chunk["usage"] = None
        chunk.update(extra)
        return chunk

    def opening(self, reply: FakeReply, request: RecordedRequest) -> bytes:
        delta = {"role": "assistant", "content": ""}
        return sse(self._chunk(request, [_choice(delta, None)]))

    def token_renderer(self, request: RecordedRequest) -> Callable[[str], bytes]:
        return sse_renderer(self._chunk(request, [_choice({"content": TEXT}, None)]))

    def closing(self, reply: FakeReply, request: RecordedRequest) -> bytes:
        parts = [sse(self._chunk(request, [_choice({}, "stop")]))]
        if reply.include_usage and _wants_usage(request):
            usage = {
                "prompt_tokens": reply.input_tokens,
                "completion_tokens": reply.reported_output_tokens,
                "total_tokens": reply.input_tokens + reply.reported_output_tokens,
            }
            parts.append(sse(self._chunk(request, [], usage=usage)))
        parts.append(b"data: [DONE]\n\n")
        return b"".join(parts)

    def error_event(self) -> bytes:
        return sse({"error": {"message": "The server had an error.", "type": "server_error"}})

    def garbage(self) -> bytes:
        return b"data: {this is not json\n\n"

    def error_body(self, status: int, request: RecordedRequest) -> dict[str, Any]:
        error_type, code = _ERROR_TYPES.get(status, ("server_error", None))
        if 400 <= status < 500 and status not in _ERROR_TYPES:
            error_type, code = "invalid_request_error", None
        # Careless on purpose: the message echoes the presented key, so tests can check that the
        # provider never passes it on.
        message = f"Request failed with status {status} for key {request.credential}."
        return {"error": {"message": message, "type": error_type, "param": None, "code": code}}

    def models_body(self) -> dict[str, Any]:
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}
        return {"object": "list", "data": [model]}


def _choice(delta: Mapping[str, object], finish_reason: str | None) -> dict[str, Any]:
    return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _wants_usage(request: RecordedRequest) -> bool:
    options = request.json.get("stream_options") or {}
    return bool(options.get("include_usage"))
