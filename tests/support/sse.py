"""A small SSE reader for tests, over an httpx streaming response."""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class SseEvent:
    id: int | None
    event: str
    data: dict[str, Any]


async def read_events(response: httpx.Response) -> AsyncIterator[SseEvent]:
    """Parse ``response``'s body as SSE frames; comments (heartbeats) are skipped."""
    event_id: int | None = None
    event = "message"
    data: list[str] = []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield SseEvent(id=event_id, event=event, data=json.loads("\n".join(data)))
            event_id, event, data = None, "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("id: "):
            event_id = int(line[4:])
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])


def assert_every_token_once(indices: list[int], texts: list[str], reply: str) -> None:
    """Chunks carry the reply whole, each token once and in order.

    A chunk's ``index`` is its first token's; tokens that arrived while the previous chunk was
    unacknowledged share one chunk, so indices rise from 0 but may skip.
    """
    assert indices and indices[0] == 0, indices
    assert all(a < b for a, b in zip(indices, indices[1:], strict=False)), indices
    assert "".join(texts) == reply
