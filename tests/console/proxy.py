"""A TCP proxy in front of the API whose open connections a test can cut, as a network would.

The browser talks to the proxy; ``cut()`` ends every connection passing through it (the
streaming reply included, mid-body) and can refuse new ones for a moment, so a client sees a real
dropped connection, then a server it cannot reach, then the server again.
"""

import contextlib
import socket
import struct
import threading
import time
from types import TracebackType

HOST = "127.0.0.1"
BUFFER = 65536


def _reset(sock: socket.socket) -> None:
    """Close with an RST (linger 0): the peer sees the connection torn, not ended."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class CuttableProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server((HOST, 0))
        self._listener.settimeout(0.2)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._pumps: dict[tuple[socket.socket, socket.socket], int] = {}
        self._refuse_until = 0.0
        self._closed = threading.Event()
        self.cuts = 0
        self._thread = threading.Thread(target=self._accept_loop, name="proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def cut(self, *, refuse_seconds: float = 0.0) -> int:
        """End every open connection; refuse new ones for ``refuse_seconds``. Returns how
        many connections were cut."""
        with self._lock:
            self._refuse_until = time.monotonic() + refuse_seconds
            pairs = list(self._pairs)
            self._pairs.clear()
            self.cuts += 1
        for pair in pairs:
            for sock in pair:
                # Only shut down here: the pump threads still use the sockets and close them.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        return len(pairs)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            with self._lock:
                refusing = time.monotonic() < self._refuse_until
            if refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection((HOST, self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
                self._pumps[pair] = 2
            for source, target in (pair, pair[::-1]):
                threading.Thread(
                    target=self._pump, args=(source, target, pair), daemon=True
                ).start()

    def _pump(
        self,
        source: socket.socket,
        target: socket.socket,
        pair: tuple[socket.socket, socket.socket],
    ) -> None:
        try:
            while data := source.recv(BUFFER):
                target.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._pairs.discard(pair)
            self._pumps[pair] -= 1
            last = self._pumps[pair] == 0
            if last:
                del self._pumps[pair]
        # One side ended: end the other too (half-closed keep-alive connections are not kept);
        # the last of the two pumps closes the sockets, so neither is closed under the other.
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            if last:
                sock.close()

    def __enter__(self) -> "CuttableProxy":
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._closed.set()
        self._listener.close()
        self._thread.join(timeout=5)
        self.cut()
