"""Small HTTP stand-ins for cloud endpoints (Google's certificates, STS and IAM Credentials,
Entra ID's token endpoint), on a free loopback port, in a thread of the test's own process.

A stand-in says only what it answers: :meth:`LoopbackServer.answer` takes a
:class:`LoopbackRequest` and returns a :class:`Reply`; this module does the serving, the
threading and the stopping. An answer that raises becomes a 500 with a JSON error, so a client
under test always gets an HTTP answer it can report, never a dropped connection.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from devstack.servers import LOCALHOST


@dataclass(frozen=True)
class LoopbackRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str:
        """A header's value by case-insensitive name, "" when absent."""
        lowered = name.lower()
        return next((value for key, value in self.headers.items() if key.lower() == lowered), "")


@dataclass(frozen=True)
class Reply:
    status: int
    body: object
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


class LoopbackServer:
    """One ThreadingHTTPServer on 127.0.0.1 answering GET and POST with JSON."""

    def __init__(self) -> None:
        answer = self._safe_answer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                self._reply("GET")

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                self._reply("POST")

            def _reply(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                reply = answer(LoopbackRequest(method, self.path, dict(self.headers.items()),
                                               body))
                content = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self._server.daemon_threads = True
        # a short poll keeps stop() from waiting out the default half second
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def answer(self, request: LoopbackRequest) -> Reply:
        raise NotImplementedError

    def _safe_answer(self, request: LoopbackRequest) -> Reply:
        try:
            return self.answer(request)
        except Exception as exc:  # a stand-in's own bug: still an HTTP answer
            return Reply(500, {"error": "stand_in_failed", "detail": type(exc).__name__})

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
