"""A small typed client of the kgents HTTP API, used by ``kgents chat`` and ``kgents ask``.

It speaks HTTP only (it imports nothing of the server), parses Server-Sent Events as they
arrive and resumes a dropped stream from the last event id it saw::

    with KgentsClient("http://127.0.0.1:8000", api_key) as client:
        session = client.create_session(mode="reflect")
        turn = client.send(session.id, "How should I plan my week?")
        for event in turn:
            if event.type == "chunk":
                print(event.data["text"], end="", flush=True)
        print(turn.result)
"""

from kgents.client.errors import ApiError, ClientError, StreamLost, Unreachable
from kgents.client.http import DEFAULT_URL, KgentsClient, SessionInfo
from kgents.client.sse import SseFrame, SseParser
from kgents.client.streams import (
    RetryPolicy,
    SessionFollow,
    StreamEvent,
    TurnResult,
    TurnStream,
    read_events,
)

__all__ = [
    "DEFAULT_URL",
    "ApiError",
    "ClientError",
    "KgentsClient",
    "RetryPolicy",
    "SessionFollow",
    "SessionInfo",
    "SseFrame",
    "SseParser",
    "StreamEvent",
    "StreamLost",
    "TurnResult",
    "TurnStream",
    "Unreachable",
    "read_events",
]
