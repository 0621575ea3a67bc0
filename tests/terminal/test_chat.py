"""``kgents chat``: its loop with piped stdin, and the real program in a pseudo-terminal where
Ctrl-C is a real SIGINT from the terminal (cancel the reply; at the prompt, leave)."""

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kgents.cli.chat import ChatLoop, ReplyPrinter
from kgents.cli.main import app
from kgents.client import KgentsClient
from tests.support.demo import message_with_reply
from tests.terminal.conftest import Server
from tests.terminal.test_client import expected_reply

HUMAN_PAUSE_SECONDS = 0.3
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def flat(text: str) -> str:
    return " ".join(text.split())


def test_chat_loop_with_piped_stdin(server: Server) -> None:
    lines = [
        "hello",
        "/mode advise",
        "what now?",
        "/mode shout",
        "/budget whisper",
        "/session",
        "/cancel",
        "/usage",
        "/usage json",
        "/new Second",
        "/nonsense",
        "/help",
    ]
    result = CliRunner().invoke(
        app,
        ["chat", "--url", server.url, "--key", server.key],
        input="\n".join(lines) + "\n",  # then end of input: Ctrl-D
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    out, err = flat(result.stdout), flat(result.stderr)
    first, second = re.findall(r"New session (ses_\w+)", out)
    assert first != second
    assert flat(expected_reply("hello")) in out
    assert "mode: advise" in out and flat(expected_reply("what now?", 0.5)) in out
    assert "mode must be one of reflect, advise, challenge, explore" in err
    assert "budget: whisper" in out and f"session: {first}" in out
    assert "no turn is running in this session" in out
    assert re.search(r"meter\W+group\W+value", out) and "llm_tokens_out" in out  # a table
    assert "tokens this month:" in out and "of 100,000" in out
    assert "unknown command /nonsense" in err and "/budget [dormant" in out
    assert out.count("tokens in") == 2
    assert f'"tenant_id": "{server.tenant_id}"' in out  # /usage json

    again = CliRunner().invoke(
        app,
        ["chat", "--url", server.url, "--key", server.key, "--session", first],
        input="/session\n",
        catch_exceptions=False,
    )
    assert again.exit_code == 0
    assert f"Continuing session {first} (4 messages)" in flat(again.stdout)
    missing = CliRunner().invoke(
        app, ["chat", "--url", server.url, "--key", server.key, "--session", "ses_gone"], input=""
    )
    assert missing.exit_code == 1 and "not_found" in missing.stderr


def test_usage_on_a_server_without_it(server: Server) -> None:
    console, errors = Console(record=True, width=100), Console(record=True, width=100)
    loop = ChatLoop(console=console, errors=errors, mode=None, budget=None)
    with KgentsClient(f"{server.url}/older", server.key) as client:  # every path is a 404
        loop._client = client
        assert loop.command("/usage") is True
    assert "usage is not available on this server" in errors.export_text()


def test_reply_printer_breaks_lines_between_words() -> None:
    console = Console(record=True, width=30)
    printer = ReplyPrinter(console, prefix="k › ")
    for token in ["Every", " question", " carries", " the", " shape", " of", " the", " answer"]:
        printer.write(token)
    printer.write(" it\nhopes for.")
    printer.end()
    text = console.export_text()
    assert text.splitlines() == [
        "k › Every question carries the",
        "shape of the answer it",
        "hopes for.",
    ]


# The real program in a pseudo-terminal


@pytest.fixture
def token_delay_ms() -> int:
    return 30


# The child becomes a session leader and takes the pty as its controlling terminal, so that
# ^C typed into the terminal is a SIGINT from the line discipline, as for a person. Its SIGINT
# is reset to the default first, as a person's shell does for the programs it starts: a suite
# started in the background of a non-interactive shell ignores SIGINT, and an ignored signal
# stays ignored through exec (Python then never raises KeyboardInterrupt).
BOOT = (
    "import fcntl, os, signal, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'kgents', *sys.argv[1:]])"
)


class Terminal:
    def __init__(self, fd: int, process: "subprocess.Popen[bytes]") -> None:
        self.fd = fd
        self.process = process
        self.screen = ""

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def expect(self, pattern: str, *, seconds: float = 15.0, after: int = 0) -> int:
        """Wait until ``pattern`` appears on screen after position ``after``; its end."""
        deadline = time.monotonic() + seconds
        regex = re.compile(pattern)
        while True:
            match = regex.search(self.screen, after)
            if match:
                return match.end()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{pattern!r} not seen; screen:\n{self.screen[-2000:]}")
            ready, _, _ = select.select([self.fd], [], [], min(remaining, 0.2))
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # the program ended and closed the terminal
                    data = b""
                self.screen += ANSI.sub("", data.decode(errors="replace"))


@contextmanager
def terminal(*args: str) -> Iterator[Terminal]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    process = subprocess.Popen(
        [sys.executable, "-c", BOOT, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    try:
        yield Terminal(master, process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        os.close(master)


def test_chat_in_a_terminal_ctrl_c_cancels_then_leaves(server: Server) -> None:
    with terminal("chat", "--url", server.url, "--key", server.key) as tty:
        at = tty.expect(r"you › ", seconds=30)  # the whole CLI starts first
        tty.type("hello\r")
        at = tty.expect(r"tokens in · \d+ out · kgent-demo-1", after=at)
        assert flat(expected_reply("hello")) in flat(tty.screen)

        tty.type("tell me everything\r")
        at = tty.expect(r"k-gent › \S+ \S+ \S+", after=at)  # mid-reply
        tty.type("\x03")
        at = tty.expect(r"cancelled\s+you › ", after=at)
        session_id = re.findall(r"New session (ses_\w+)", tty.screen)[0]
        messages = server.get(f"/v1/kgent/sessions/{session_id}/messages").json()["messages"]
        reply = expected_reply("tell me everything")
        assert messages[-1]["role"] == "assistant" and reply.startswith(messages[-1]["content"])
        assert messages[-1]["content"] != reply  # cut short

        tty.type("again\r")  # the program is still there and the session still works
        at = tty.expect(r"tokens in · \d+ out · kgent-demo-1\s+you › ", after=at)
        # At the prompt: leave. Not within microseconds of the prompt, as a script could: a
        # SIGINT that lands between the prompt's write and input()'s read is only seen by
        # Python when the read returns (CPython checks signals between bytecodes).
        time.sleep(HUMAN_PAUSE_SECONDS)
        tty.type("\x03")
        tty.expect(r"you › \n", after=at - len("you › "))
        tty.process.wait(timeout=10)
    assert tty.process.returncode == 0

    # Continued later: the last messages, the cancelled reply marked as such.
    again = CliRunner().invoke(
        app, ["chat", "--url", server.url, "--key", server.key, "--session", session_id], input=""
    )
    assert again.exit_code == 0, again.output
    shown = flat(again.stdout)
    assert "(6 messages). you › hello k-gent ›" in shown
    assert f"{flat(messages[-1]['content'])} cancelled you › again" in shown


@pytest.mark.parametrize("token_delay_ms", [100])  # a reply of ~11 s: time to come back
def test_chat_reattaches_to_a_reply_still_running(server: Server) -> None:
    question = message_with_reply("Walk me through it slowly", words=range(110, 121))
    with terminal("chat", "--url", server.url, "--key", server.key) as tty:
        at = tty.expect(r"you › ", seconds=30)
        tty.type(question + "\r")
        tty.expect(r"k-gent › \S+ \S+ \S+", after=at)  # mid-reply: the terminal goes away
        session_id = re.findall(r"New session (ses_\w+)", tty.screen)[0]
    running = server.get(f"/v1/kgent/sessions/{session_id}/messages").json()["running_turn"]
    assert running is not None  # the reply goes on without its terminal

    with terminal("chat", "--url", server.url, "--key", server.key, "--session", session_id) as tty:
        at = tty.expect(rf"you › {re.escape(question)}", seconds=30)
        # The reply from its first word to its end, then the prompt.
        end = tty.expect(r"tokens in · \d+ out · kgent-demo-1\s+.*\s+you › ", after=at)
        reply = expected_reply(question)
        assert flat(f"k-gent › {reply}") in flat(tty.screen[at:end])
        tty.type("\x04")  # Ctrl-D leaves
        tty.process.wait(timeout=10)
    assert tty.process.returncode == 0
    history = server.get(f"/v1/kgent/sessions/{session_id}/messages").json()
    assert history["running_turn"] is None and history["messages"][-1]["content"] == reply
