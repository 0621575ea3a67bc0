"""A TCP proxy on 127.0.0.1 that can cut a connection mid-stream, as a failing network would.

``cut_at(marker)``: the first time the server sends ``marker`` on any connection, the bytes up
to it (plus ``keep`` more) are forwarded and then both sides of that connection are closed.
Connections made afterwards are forwarded untouched.
"""

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

BUFFER = 65536


class CuttingProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.accepted = 0
        self.cuts = 0
        self._marker: bytes | None = None
        self._keep = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut_at(self, marker: bytes, *, keep: int = 0) -> None:
        with self._lock:
            self._marker, self._keep = marker, keep

    def start(self) -> "CuttingProxy":
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()
        return self

    def close(self) -> None:
        self._closed = True
        _close(self.listener)  # shutdown first: it wakes the thread blocked in accept()
        with self._lock:
            for sock in self._sockets:
                _close(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self.accepted += 1
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_server: bool) -> None:
        seen = b""
        try:
            while data := source.recv(BUFFER):
                marker = self._marker if from_server else None
                if marker is not None:
                    seen = (seen + data)[-(len(data) + len(marker)) :]
                    position = seen.find(marker)
                    if position >= 0:
                        with self._lock:
                            if self._marker is not None:
                                self._marker = None
                                self.cuts += 1
                                offset = len(seen) - len(data)  # where data starts in seen
                                target.sendall(data[: max(0, position - offset + self._keep)])
                                raise ConnectionAbortedError("cut by the test")
                target.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(target)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


@contextmanager
def cutting_proxy(upstream_url: str) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(int(upstream_url.rsplit(":", 1)[1])).start()
    try:
        yield proxy
    finally:
        proxy.close()
