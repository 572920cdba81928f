"""The sandbox's HTTP front: a stdlib ThreadingHTTPServer that parses requests, routes them by
path prefix to a provider dialect (CloudConvert v2 below /v2; other dialects mount beside it on
the same port), serves exported files below /files/, and applies the latency fault. `Sandbox`
owns the server, the shared backend and the file store; `serve` runs one in the foreground for
the `convbridge sandbox` command. No parsing of provider semantics happens here."""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

from .cloudconvert_v2 import DIALECT as CLOUDCONVERT_V2
from .cloudconvert_v2 import CloudConvertV2
from .models import ApiRequest, ApiResponse, Backend, Dialect, Faults
from .storage_io import FileStore

log = logging.getLogger("devstack.sandbox")

MAX_BODY_BYTES = 10 * 1024 * 1024
_CHUNK = 64 * 1024


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dialects: list[Dialect], files: FileStore,
                 faults: Faults) -> None:
        super().__init__(address, _Handler)
        self.dialects = dialects
        self.files = files
        self.faults = faults


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps client connections alive; every answer therefore sets Content-Length.
    protocol_version = "HTTP/1.1"
    # Headers and body go out as separate writes; with Nagle on, each keep-alive answer
    # would wait ~40 ms for a delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._dispatch()

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch()

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch()

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch()

    def do_PATCH(self) -> None:  # noqa: N802
        self._dispatch()

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # The request line holds only paths (no credentials); keep it out of stderr.
        log.debug("%s - %s", self.address_string(), format % args)

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._send(ApiResponse(413, b"request body too large"))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        if parts.path.startswith("/files/"):
            self._send_file(parts.path)
            return
        for dialect in self.server.dialects:
            if parts.path == dialect.prefix or parts.path.startswith(dialect.prefix + "/"):
                if self.server.faults.latency_seconds:
                    time.sleep(self.server.faults.latency_seconds)
                request = ApiRequest(
                    method=self.command,
                    path=parts.path,
                    query=parts.query,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                try:
                    response = dialect.handle(request)
                except Exception:
                    log.exception("dialect %s failed on %s %s", dialect.prefix, self.command,
                                  parts.path)
                    response = ApiResponse(
                        500, b'{"message": "Server Error", "code": "INTERNAL_ERROR"}',
                        {"Content-Type": "application/json"},
                    )
                self._send(response)
                return
        self._send(ApiResponse(404, b'{"message": "Not found.", "code": "NOT_FOUND"}',
                               {"Content-Type": "application/json"}))

    def _send(self, response: ApiResponse) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _send_file(self, path: str) -> None:
        token = path[len("/files/"):].split("/", 1)[0]
        stored = self.server.files.get(token) if self.command in ("GET", "HEAD") else None
        if stored is None:
            self._send(ApiResponse(404, b"not found"))
            return
        self.send_response(200)
        self.send_header("Content-Type", stored.content_type)
        self.send_header("Content-Length", str(len(stored.data)))
        self.send_header(
            "Content-Disposition", f"attachment; filename*=UTF-8''{quote(stored.filename)}"
        )
        self.end_headers()
        if self.command == "HEAD":
            return
        view = memoryview(stored.data)
        for start in range(0, len(view), _CHUNK):
            self.wfile.write(view[start:start + _CHUNK])


class Sandbox:
    """A local conversion API: start(), use `url`, wait_idle(), stop() (or `with`)."""

    def __init__(
        self,
        api_key: str,
        signing_secret: str,
        host: str = "127.0.0.1",
        port: int = 0,
        callback_attempts: int = 4,
        callback_backoff_seconds: float = 0.2,
        faults: Faults | None = None,
    ) -> None:
        self._address = (host, port)
        self._api_key = api_key
        self._signing_secret = signing_secret
        self._files = FileStore()
        self._faults = faults or Faults()
        self._backend = Backend(
            faults=self._faults,
            files=self._files,
            public_url=lambda: self.url,
            callback_attempts=callback_attempts,
            callback_backoff_seconds=callback_backoff_seconds,
        )
        self._cloudconvert_v2 = CloudConvertV2(
            self._backend, api_key=api_key, signing_secret=signing_secret,
            base_url=lambda: self.url,
        )
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        # The key and secret stay out of reprs, and therefore out of logs and tracebacks.
        return f"Sandbox(url={self.url if self._server else None!r})"

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("Sandbox not started")
        return f"http://{self._address[0]}:{self._server.server_port}"

    def start(self) -> Sandbox:
        self._server = _Server(self._address, [self._cloudconvert_v2], self._files, self._faults)
        server = self._server
        # A short poll interval makes stop() quick; tests start and stop many sandboxes.
        self._thread = threading.Thread(
            target=lambda: server.serve_forever(poll_interval=0.05), name="sandbox-http",
            daemon=True,
        )
        self._thread.start()
        log.info("sandbox listening on %s", self.url)
        return self

    def stop(self) -> None:
        self._backend.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_idle(self, timeout: float = 30) -> None:
        """Block until every job has ended and its callbacks were delivered or given up;
        TimeoutError otherwise."""
        self._backend.wait_idle(timeout)

    def jobs(self) -> list[dict[str, Any]]:
        """Every CloudConvert v2 job, as GET /v2/jobs/{id} returns it (without `data`)."""
        return [self._cloudconvert_v2.render_job(job)
                for job in self._backend.jobs(CLOUDCONVERT_V2)]

    def deliveries(self) -> list[dict[str, Any]]:
        """Every callback attempt: {job_id, event, status (None on network error), attempt}."""
        return [
            {"job_id": d.job_id, "event": d.event, "status": d.status, "attempt": d.attempt}
            for d in self._backend.deliveries()
        ]


def serve(port: int, api_key: str, signing_secret: str, host: str = "127.0.0.1") -> None:
    """Run a sandbox in the foreground until Ctrl-C."""
    with Sandbox(api_key=api_key, signing_secret=signing_secret, host=host, port=port) as sandbox:
        print(f"convbridge sandbox on {sandbox.url} (CloudConvert v2: {sandbox.url}/v2); "
              "Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
