"""Fixtures of the SDK conformance suite: one sandbox for the module, a callback receiver
recording raw bodies, and sample images. The providers' official SDKs talk to the sandbox
unchanged, only their base URL pointed at it."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from devstack.sandbox import Sandbox

API_KEY = "sdk-conformance-key"
SIGNING_SECRET = "sdk-conformance-signing-secret"


def png(size: tuple[int, int] = (32, 24)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(out, "PNG")
    return out.getvalue()


def image_format(data: bytes) -> str | None:
    return Image.open(io.BytesIO(data)).format


class _ReceiverServer(ThreadingHTTPServer):
    daemon_threads = True


class Receiver:
    """A webhook endpoint keeping each request's raw body and headers; it answers each path
    with its scripted (seconds to wait, status) pairs in turn, then at once with 200."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.script: dict[str, list[tuple[float, int]]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver._lock:
                    receiver.calls.append({"path": self.path, "body": body, "headers": {
                        k.lower(): v for k, v in self.headers.items()}})
                    planned = receiver.script.get(self.path, [])
                    wait, status = planned.pop(0) if planned else (0.0, 200)
                time.sleep(wait)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _ReceiverServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def wait_for(self, path: str, timeout: float = 10) -> dict[str, Any]:
        """The first request to `path`, waiting for it to arrive."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [call for call in self.calls if call["path"] == path]
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no callback reached {path} within {timeout} s")


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET) as running:
        yield running


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()
    found.server.server_close()
