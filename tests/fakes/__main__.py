"""Serve one fake in its own process: print its base URL, then serve until SIGINT or SIGTERM.

python -m tests.fakes openai --tokens 200 --delay-ms 5
"""

import argparse
import signal
import sys
import threading

from .anthropic_server import FakeAnthropic
from .llm_server import FakeLLMServer, FakeReply
from .openai_server import FakeOpenAI


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes")
    parser.add_argument("kind", choices=["openai", "anthropic"])
    parser.add_argument("--tokens", type=int, default=200, help="tokens per reply")
    parser.add_argument("--delay-ms", type=float, default=5.0, help="pause between tokens")
    args = parser.parse_args(argv)

    fake: FakeLLMServer = FakeOpenAI() if args.kind == "openai" else FakeAnthropic()
    tokens = tuple(f" w{i}" if i else "w0" for i in range(args.tokens))
    fake.reply = FakeReply(tokens=tokens, delay_seconds=args.delay_ms / 1000)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with fake:
        sys.stdout.write(f"{fake.base_url}\n")
        sys.stdout.flush()
        stop.wait()


if __name__ == "__main__":
    main()
