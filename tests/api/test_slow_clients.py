"""``kgents serve`` cuts off clients that hold a connection without finishing their request:
slow or missing request heads, slow bodies, and heads that are too large (a real server)."""

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ADMIN_TOKEN
from tests.support.servers import ServerProcess

DEADLINE_SECONDS = 20.0  # how long a test waits for the server; far above the 1 s timeouts


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, nats_url: str) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("slow-clients")
    env = {
        "KGENTS_DATABASE_URL": f"sqlite:///{root / 'kgents.db'}",
        "KGENTS_NATS_URL": nats_url,
        "KGENTS_ADMIN_TOKEN": ADMIN_TOKEN,
        "KGENTS_REQUEST_HEAD_TIMEOUT_SECONDS": "1",
        "KGENTS_REQUEST_BODY_TIMEOUT_SECONDS": "1",
    }
    with ServerProcess(Path(root / "data"), env) as process:
        yield process


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(DEADLINE_SECONDS)  # a server that never answers fails the test here
    return sock


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or resets) the connection."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass  # closed with our data unread: what came before is the answer
    return received


def test_a_connection_that_never_finishes_its_head_is_cut_off(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: kgents\r\nX-Slow: ")
        answer = until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    with connect(server) as sock:  # nothing sent at all
        assert until_closed(sock).startswith(b"HTTP/1.1 408 ")


def test_a_kept_alive_connection_gets_the_same_deadline_for_its_next_head(
    server: ServerProcess,
) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: kgents\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 "), first
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: kg")  # and then nothing
        answer = first + until_closed(sock)
    assert answer.count(b"HTTP/1.1 ") == 2, answer
    assert b"HTTP/1.1 408 " in answer.partition(b"HTTP/1.1 200 ")[2], answer


def test_a_slow_body_is_cut_off_with_408(server: ServerProcess) -> None:
    with connect(server) as sock:
        sock.sendall(
            b"POST /v1/tenants HTTP/1.1\r\nHost: kgents\r\n"
            + f"Authorization: Bearer {ADMIN_TOKEN}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            + b'{"name": "sl'
        )
        answer = until_closed(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b'"code": "request_timeout"' in body


def test_oversized_heads_are_refused(server: ServerProcess) -> None:
    big = b"X-Big: " + b"a" * 100_000 + b"\r\n"
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(20_000))
    for extra in (big, many):
        with connect(server) as sock:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: kgents\r\n" + extra + b"\r\n")
            answer = until_closed(sock)
        # 400 from the server when it arrives in pieces (the connection may be reset before
        # the answer is read), 431 when it arrived whole; never served.
        assert answer == b"" or answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")), answer
