"""A byte-counting TCP relay: what one call really puts on the wire, framing included.

``CountingProxy(upstream_host, upstream_port)`` listens on a free local port and forwards every
connection to the upstream server, counting the bytes in each direction. Point a client at
``proxy.address`` to measure HTTP (headers, JSON, binary tensors) or gRPC (HTTP/2 frames,
protobuf) exactly as sent. ``capture=True`` also keeps every byte sent to the server in
``captured`` (for tests that look at request headers). Only used for byte counts, never for
timings. This is the project's one such relay (bench, session measurements, tests).
"""

from __future__ import annotations

import contextlib
import socket
import threading

_CHUNK = 1 << 20


class CountingProxy:
    def __init__(self, upstream_host: str, upstream_port: int, capture: bool = False) -> None:
        self.upstream = (upstream_host, int(upstream_port))
        self._lock = threading.Lock()
        self.sent = 0  # client -> server
        self.received = 0  # server -> client
        self.captured = bytearray()  # client -> server bytes, with ``capture=True``
        self._capture = capture
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._closed = False
        threading.Thread(target=self._accept, name="bench-proxy", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.sent = self.received = 0
            self.captured.clear()

    def counts(self) -> tuple[int, int]:
        """``(sent, received)``: bytes client -> server and server -> client so far."""
        with self._lock:
            return self.sent, self.received

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=30)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            for src, dst, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pump, args=(src, dst, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                with self._lock:
                    if upstream:
                        self.sent += len(data)
                        if self._capture:
                            self.captured += data
                    else:
                        self.received += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.close()

    def __enter__(self) -> CountingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
