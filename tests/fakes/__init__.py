"""Fake LLM servers for the tests and benchmarks: real HTTP on 127.0.0.1, real wire formats.

In a test (uvicorn in a thread on a free port, stopped on exit)::

    with FakeOpenAI() as fake:                     # or FakeAnthropic()
        fake.reply = FakeReply(tokens=("a", " b"), delay_seconds=0.005)
        fake.queue(FakeReply(status=429))          # used once, before falling back to fake.reply
        provider = OpenAIProvider(api_key="k", base_url=fake.base_url)
        ...
        fake.stream_requests[-1].json              # what the client sent

In its own process (benchmarks: no GIL shared with the code under test)::

    python -m tests.fakes openai --tokens 200 --delay-ms 5    # prints the URL, serves until killed
"""

from .anthropic_server import FakeAnthropic
from .llm_server import DEFAULT_TOKENS, Failure, FakeLLMServer, FakeReply, RecordedRequest
from .openai_server import FakeOpenAI
from .server import ThreadedServer

__all__ = [
    "DEFAULT_TOKENS",
    "Failure",
    "FakeAnthropic",
    "FakeLLMServer",
    "FakeOpenAI",
    "FakeReply",
    "RecordedRequest",
    "ThreadedServer",
]
