"""A local HTTP server that serves large deterministic blobs without holding them: a stand-in
for a provider's download URL in relay tests and benchmarks.

Content is a repeating 1 MiB block derived from a seed, so any size up to many GiB costs one
block of memory, and :func:`expected_digest` computes the checksum the receiver must see. A
``drop_after`` byte count makes every download stop early with the full Content-Length
announced, as a dropped connection does; ``chunked`` sends no Content-Length at all, as a
streaming provider endpoint may. :class:`RedirectServer` answers every GET with a redirect, as a
provider's download URL pointing at its storage does.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BLOCK = 1024 * 1024


def pattern_block(seed: str = "convbridge") -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < BLOCK:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:BLOCK])


def iter_pattern(size: int, seed: str = "convbridge") -> Iterator[bytes]:
    block = pattern_block(seed)
    left = size
    while left > 0:
        piece = block if left >= BLOCK else block[:left]
        left -= len(piece)
        yield piece


def expected_digest(size: int, seed: str = "convbridge") -> str:
    digest = hashlib.sha256()
    for piece in iter_pattern(size, seed):
        digest.update(piece)
    return digest.hexdigest()


class PatternServer:
    """Serves ``GET /blob/<size>`` (bytes) on a free loopback port."""

    def __init__(self, *, seed: str = "convbridge", drop_after: int | None = None,
                 chunked: bool = False, host: str = "127.0.0.1") -> None:
        self.seed = seed
        self.drop_after = drop_after
        self.chunked = chunked
        self.requests = 0
        #: body bytes handed to the socket, over all requests (a reader that stops early
        #: leaves the rest unsent, bar what the socket buffers took)
        self.bytes_sent = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                outer.requests += 1
                try:
                    size = int(self.path.rsplit("/", 1)[-1])
                except ValueError:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if outer.chunked:
                    self.send_header("Transfer-Encoding", "chunked")
                else:
                    self.send_header("Content-Length", str(size))
                self.end_headers()
                sent = 0
                try:
                    for piece in iter_pattern(size, outer.seed):
                        if outer.drop_after is not None and sent + len(piece) > outer.drop_after:
                            self.wfile.write(piece[: outer.drop_after - sent])
                            self.wfile.flush()
                            self.close_connection = True
                            self.connection.shutdown(2)
                            return
                        self._send(piece)
                        sent += len(piece)
                    if outer.chunked:
                        self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the reader stopped early

            def _send(self, piece: bytes) -> None:
                framed = b"%x\r\n%s\r\n" % (len(piece), piece) if outer.chunked else piece
                self.wfile.write(framed)
                outer.bytes_sent += len(piece)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, size: int) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/blob/{size}"

    def start(self) -> PatternServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> PatternServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedirectServer:
    """Answers every GET with ``status`` and ``Location: <location>``, counting requests."""

    def __init__(self, location: str, *, status: int = 302, host: str = "127.0.0.1") -> None:
        self.location = location
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server naming)
                outer.requests += 1
                self.send_response(status)
                self.send_header("Location", outer.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/download"

    def __enter__(self) -> RedirectServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
