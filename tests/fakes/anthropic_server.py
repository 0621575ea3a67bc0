"""A fake Anthropic Messages API: ``POST /v1/messages`` (streaming) and ``GET /v1/models``.

The stream is what Anthropic sends: named events (``event:`` then ``data:``) ``message_start``
(with the input usage), ``content_block_start``, ``ping``, one ``content_block_delta``
(``text_delta``) per token, ``content_block_stop``, ``message_delta`` (with the cumulative output
usage) and ``message_stop``. ``error_event`` is Anthropic's mid-stream ``overloaded_error``.
"""

from collections.abc import Callable
from typing import Any

from .llm_server import TEXT, FakeLLMServer, FakeReply, RecordedRequest, sse, sse_renderer

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class FakeAnthropic(FakeLLMServer):
    """An Anthropic-compatible server.

    ``cache_creation_input_tokens`` and ``cache_read_input_tokens`` are reported in
    ``message_start`` next to ``input_tokens``.
    """

    stream_path = "/v1/messages"
    models_path = "/v1/models"

    def __init__(self, *, model: str = "fake-claude") -> None:
        super().__init__(model=model)
        self.cache_creation_input_tokens = 0
        self.cache_read_input_tokens = 0

    def opening(self, reply: FakeReply, request: RecordedRequest) -> bytes:
        message: dict[str, Any] = {
            "id": f"msg_fake_{request.number}",
            "type": "message",
            "role": "assistant",
            "model": request.json.get("model", self.model),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
        }
        if reply.include_usage:
            message["usage"] = {
                "input_tokens": reply.input_tokens,
                "cache_creation_input_tokens": self.cache_creation_input_tokens,
                "cache_read_input_tokens": self.cache_read_input_tokens,
                "output_tokens": 1,
            }
        block = {
            "type": "content_block_start",
            "index": 0,
            "content_block": {"type": "text", "text": ""},
        }
        return b"".join(
            [
                sse({"type": "message_start", "message": message}, event="message_start"),
                sse(block, event="content_block_start"),
                sse({"type": "ping"}, event="ping"),
            ]
        )

    def token_renderer(self, request: RecordedRequest) -> Callable[[str], bytes]:
        delta = {"type": "text_delta", "text": TEXT}
        event = {"type": "content_block_delta", "index": 0, "delta": delta}
        return sse_renderer(event, event="content_block_delta")

    def closing(self, reply: FakeReply, request: RecordedRequest) -> bytes:
        message_delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        }
        if reply.include_usage:
            message_delta["usage"] = {"output_tokens": reply.reported_output_tokens}
        return b"".join(
            [
                sse({"type": "content_block_stop", "index": 0}, event="content_block_stop"),
                sse(message_delta, event="message_delta"),
                sse({"type": "message_stop"}, event="message_stop"),
            ]
        )

    def error_event(self) -> bytes:
        error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        return sse(error, event="error")

    def garbage(self) -> bytes:
        return b"event: content_block_delta\ndata: {this is not json\n\n"

    def error_body(self, status: int, request: RecordedRequest) -> dict[str, Any]:
        default = "api_error" if status >= 500 else "invalid_request_error"
        # Careless on purpose: the message echoes the presented key, so tests can check that the
        # provider never passes it on.
        message = f"Request failed with status {status} for key {request.credential}."
        return {
            "type": "error",
            "error": {"type": _ERROR_TYPES.get(status, default), "message": message},
            "request_id": f"req_fake_{request.number}",
        }

    def models_body(self) -> dict[str, Any]:
        model = {
            "type": "model",
            "id": self.model,
            "display_name": "Fake Claude",
            "created_at": "2025-01-01T00:00:00Z",
        }
        return {"data": [model], "has_more": False, "first_id": self.model, "last_id": self.model}
