"""The sandbox's HTTP front: a stdlib ThreadingHTTPServer that parses requests, routes them by
path prefix to a provider dialect (CloudConvert v2 below /v2 and its sync API below /sync/v2,
CloudConvert v1 below /v1, FreeConvert below /freeconvert/v1, Online-Convert below
/onlineconvert/v2, all on one port), serves exported files below /files/ (small ones from
memory, large ones from disk with sendfile; under the redirect fault through a 302 to the same
path on a second port, the storage host), applies the transport-level faults (latency, held
answers, dropped downloads, redirects) and
keeps a log of every request for tests. `Sandbox` owns the server, the shared backend and the
file store; `serve` runs one in the foreground for `python -m devstack.sandbox`. No parsing
of provider semantics happens here."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

from . import cloudconvert_v1, freeconvert, onlineconvert
from .backend import Backend
from .cloudconvert_v2 import DIALECT as CLOUDCONVERT_V2
from .cloudconvert_v2 import CloudConvertV2, CloudConvertV2Sync
from .dialects import DialectParts, ProviderDialect, plugin_dialects
from .faults import Faults
from .models import ApiRequest, ApiResponse, CallbackTiming, Dialect
from .storage_io import FileBlob, FileStore

log = logging.getLogger("devstack.sandbox")

MAX_BODY_BYTES = 10 * 1024 * 1024
_CHUNK = 64 * 1024


class _Log:
    """The request and download logs behind Sandbox.requests() and Sandbox.downloads()."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._downloads: list[dict[str, Any]] = []

    def request(self, started: float, method: str, path: str, status: int | str,
                retry_after: str | None) -> None:
        entry = {"time": started, "method": method, "path": path, "status": status,
                 "retry_after": retry_after}
        with self._lock:
            self._requests.append(entry)

    def download(self, started: float, path: str, status: int, dropped: bool) -> None:
        entry = {"time": started, "path": path, "status": status, "dropped": dropped}
        with self._lock:
            self._downloads.append(entry)

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._requests]

    def downloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(entry) for entry in self._downloads]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The stdlib default of 5 drops connection attempts when a few dozen clients arrive at
    # once, and each dropped SYN costs the client a one-second retransmit.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], dialects: list[Dialect], files: FileStore,
                 backend: Backend, journal: _Log,
                 storage_url: Callable[[], str] | None = None) -> None:
        super().__init__(address, _Handler)
        self.dialects = dialects
        self.files = files
        self.backend = backend
        self.journal = journal
        # where downloads are redirected under the redirect fault; None on the storage
        # host itself, which always serves
        self.storage_url = storage_url


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
        started = time.monotonic()
        parts = urlsplit(self.path)
        if parts.path.startswith("/files/"):
            self._send_file(parts.path, started)
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._answer(started, parts.path, ApiResponse(413, b"request body too large"))
            return
        body = self.rfile.read(length) if length else b""
        for dialect in self.server.dialects:
            if parts.path == dialect.prefix or parts.path.startswith(dialect.prefix + "/"):
                latency = self.server.backend.faults.latency_seconds
                if latency:
                    time.sleep(latency)
                limit = self.server.backend.faults.max_requests_per_second
                api_key = (self.headers.get("Authorization") or self.headers.get("X-Oc-Api-Key")
                           or "")
                if limit is not None and self.server.backend.over_rate(api_key):
                    self._answer(started, parts.path, ApiResponse(
                        429, b'{"message": "Too Many Requests"}',
                        {"Content-Type": "application/json", "Retry-After": "1",
                         "X-RateLimit-Limit": f"{limit:g}", "X-RateLimit-Remaining": "0"}))
                    return
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
                self._answer(started, parts.path, response)
                return
        self._answer(started, parts.path, ApiResponse(
            404, b'{"message": "Not found.", "code": "NOT_FOUND"}',
            {"Content-Type": "application/json"},
        ))

    def _answer(self, started: float, path: str, response: ApiResponse) -> None:
        held = response.hold_seconds > 0
        self.server.journal.request(
            started, self.command, path, "timeout" if held else response.status,
            response.headers.get("Retry-After"),
        )
        if held and self.server.backend.stopping.wait(response.hold_seconds):
            self.close_connection = True
            return
        try:
            self._send(response)
        except OSError:  # a client that timed out has usually gone by now
            self.close_connection = True

    def _send(self, response: ApiResponse) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    def _send_file(self, path: str, started: float) -> None:
        # A download has no body to read; anything sent is left unread, so don't reuse.
        if self.headers.get("Content-Length") not in (None, "0"):
            self.close_connection = True
        token = path[len("/files/"):].split("/", 1)[0]
        stored = self.server.files.get(token) if self.command in ("GET", "HEAD") else None
        if stored is None:
            if self.command == "GET":
                self.server.journal.download(started, path, 404, False)
            self._send(ApiResponse(404, b"not found"))
            return
        if self.server.storage_url is not None and self.server.backend.faults.redirect_downloads:
            if self.command == "GET":
                self.server.journal.download(started, path, 302, False)
            self._send(ApiResponse(302, b"", {"Location": self.server.storage_url() + path}))
            return
        blob = stored.blob
        try:
            size = blob.size
        except OSError:  # a spilled file removed at stop, or a served file deleted by its owner
            self._send(ApiResponse(404, b"not found"))
            return
        faults = self.server.backend.faults
        dropped = self.command == "GET" and self.server.backend.draw(faults.drop_download_rate)
        if self.command == "GET":
            self.server.journal.download(started, path, 200, dropped)
        self.send_response(200)
        self.send_header("Content-Type", stored.content_type)
        self.send_header("Content-Length", str(size))
        self.send_header(
            "Content-Disposition", f"attachment; filename*=UTF-8''{quote(stored.filename)}"
        )
        self.end_headers()
        if self.command == "HEAD":
            return
        count = min(max(0, faults.drop_after_bytes), size) if dropped else size
        try:
            _write_body(self, blob, count)
        except OSError:
            self.close_connection = True
            return
        if dropped:
            # Fewer bytes than Content-Length, then the connection ends: the client sees an
            # incomplete body, as when a provider's CDN connection breaks mid-download.
            self.close_connection = True


def _write_body(handler: _Handler, blob: FileBlob, count: int) -> None:
    """The first `count` bytes of `blob`: from memory, or from disk with sendfile, so a large
    file never passes through this process's memory."""
    if blob.path is None:
        view = memoryview(blob.data)[:count]
        for start in range(0, len(view), _CHUNK):
            handler.wfile.write(view[start:start + _CHUNK])
        return
    if count == 0:
        return
    with blob.path.open("rb") as source:
        handler.connection.sendfile(source, 0, count)


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
        job_workers: int = 4,
    ) -> None:
        self._address = (host, port)
        self._api_key = api_key
        self._signing_secret = signing_secret
        self._files = FileStore()
        self._journal = _Log()
        self._backend = Backend(
            faults=faults or Faults(),
            files=self._files,
            public_url=lambda: self.url,
            callback_attempts=callback_attempts,
            callback_backoff_seconds=callback_backoff_seconds,
            job_workers=job_workers,
        )
        self._cloudconvert_v2 = CloudConvertV2(
            self._backend, api_key=api_key, signing_secret=signing_secret,
            base_url=lambda: self.url,
        )
        self._aws_endpoint: str | None = None
        self._freeconvert = freeconvert.FreeConvertV1(
            self._backend, api_key=api_key, signing_secret=signing_secret,
            base_url=lambda: self.url)
        self._onlineconvert = onlineconvert.OnlineConvertV2(
            self._backend, api_key=api_key, base_url=lambda: self.url,
            aws_endpoint=lambda: self._aws_endpoint)
        self._cloudconvert_v1 = cloudconvert_v1.CloudConvertV1(
            self._backend, api_key=api_key, base_url=lambda: self.url)
        self._cloudconvert_v2_sync = CloudConvertV2Sync(self._cloudconvert_v2)
        built_in = [
            ProviderDialect("cloudconvert", self._cloudconvert_v2.prefix, CLOUDCONVERT_V2,
                            self._cloudconvert_v2.render_job, "CONVERSION_FAILED",
                            (self._cloudconvert_v2, self._cloudconvert_v2_sync)),
            ProviderDialect("cloudconvert_v1", self._cloudconvert_v1.prefix,
                            cloudconvert_v1.DIALECT, self._cloudconvert_v1.render_job, "422",
                            (self._cloudconvert_v1,)),
            ProviderDialect("freeconvert", self._freeconvert.prefix, freeconvert.DIALECT,
                            self._freeconvert.render_job, "CONVERSION_FAILED",
                            (self._freeconvert,)),
            ProviderDialect("onlineconvert", self._onlineconvert.prefix, onlineconvert.DIALECT,
                            self._onlineconvert.render_job,
                            str(onlineconvert.ERROR_CODES["CONVERSION_FAILED"]),
                            (self._onlineconvert,)),
        ]
        added = plugin_dialects(DialectParts(self._backend, api_key, signing_secret,
                                             lambda: self.url))
        #: provider name (as in rules) -> its dialect; built-in names win over added ones
        self.dialects: dict[str, ProviderDialect] = {}
        for dialect in [*built_in, *added]:
            self.dialects.setdefault(dialect.provider, dialect)
        self._server: _Server | None = None
        # the storage host export URLs redirect to under the redirect_downloads fault
        self._storage: _Server | None = None
        self._threads: list[threading.Thread] = []

    def __repr__(self) -> str:
        # The key and secret stay out of reprs, and therefore out of logs and tracebacks.
        return f"Sandbox(url={self.url if self._server else None!r})"

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("Sandbox not started")
        return f"http://{self._address[0]}:{self._server.server_port}"

    def base_url(self, provider: str) -> str:
        """Where the bridge reaches ``provider`` (its ``CONVBRIDGE_<NAME>_URL``)."""
        return self.url + self.dialects[provider].prefix

    @property
    def sync_url(self) -> str:
        """CloudConvert's sync API host (sync.api.cloudconvert.com) on this sandbox: the base
        the SDKs' `wait` calls append /v2/jobs/{id} and /v2/tasks/{id} to."""
        return self.url + "/sync"

    @property
    def storage_url(self) -> str:
        """The storage host downloads are redirected to under the redirect_downloads fault."""
        if self._storage is None:
            raise RuntimeError("Sandbox not started")
        return f"http://{self._address[0]}:{self._storage.server_port}"

    def start(self) -> Sandbox:
        dialects: list[Dialect] = [served for dialect in self.dialects.values()
                                   for served in dialect.served]
        self._storage = _Server((self._address[0], 0), [], self._files, self._backend,
                                self._journal)
        self._server = _Server(self._address, dialects, self._files, self._backend,
                               self._journal, storage_url=lambda: self.storage_url)
        for name, server in (("sandbox-http", self._server), ("sandbox-storage", self._storage)):
            # A short poll interval makes stop() quick; tests start and stop many sandboxes.
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                      name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("sandbox listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving, drop queued work, release held answers, delete spilled files."""
        self._backend.close()
        for server in (self._server, self._storage):
            if server is not None:
                server.shutdown()
                server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._server = self._storage = None
        self._threads = []

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def faults(self) -> Faults:
        return self._backend.faults

    def set_faults(self, faults: Faults) -> None:
        """Change the faults while running (thread-safe); later requests, downloads, tasks
        and callback deliveries see the new ones."""
        self._backend.set_faults(faults)

    def set_azure_endpoint(self, account: str, endpoint: str) -> None:
        """Where Azure tasks naming ``storage_account`` reach its blobs (an Azurite URL such
        as http://127.0.0.1:10000/devstoreaccount1); the offline stand-in for Azure's DNS."""
        self._backend.set_azure_endpoint(account, endpoint)

    def set_gcs_endpoint(self, endpoint: str | None) -> None:
        """Where GCS tasks reach Cloud Storage (a fake-gcs-server URL); the offline stand-in
        for storage.googleapis.com. None: GCS tasks fail as unreachable."""
        self._backend.set_gcs_endpoint(endpoint)

    def mint_cloudconvert_key(self, scopes: Iterable[str]) -> str:
        """A new CloudConvert v2 API key with exactly `scopes` (task.read, task.write,
        user.read, ...); requests it lacks the scope for are refused with 403, as a key made
        in CloudConvert's dashboard with those scopes. The sandbox's own key has them all."""
        return self._cloudconvert_v2.mint_key(frozenset(scopes))

    def set_cloudconvert_webhook(self, url: str | None, signing_secret: str | None = None) -> None:
        """The CloudConvert v2 account's webhook for job.finished and job.failed, as made in
        the dashboard, signed with its own `signing_secret` (None: no account webhook)."""
        self._cloudconvert_v2.set_webhook(url, signing_secret)

    def set_cloudconvert_job_signing_secret(self, secret: str) -> None:
        """The secret that signs CloudConvert v2 callbacks to a job's own webhook_url."""
        self._cloudconvert_v2.set_job_signing_secret(secret)

    def set_freeconvert_webhook(self, url: str | None) -> None:
        """The FreeConvert account's webhook (FreeConvert has no per-job callback URL)."""
        self._freeconvert.set_webhook(url)

    def set_onlineconvert_signing_secret(self, secret: str | None) -> None:
        """Online-Convert's signed webhooks: callbacks carry ``X-Oc-Signature`` (HMAC-SHA256
        of the body with `secret`, as the official SDK verifies); None sends them unsigned,
        as the seed documents."""
        self._onlineconvert.set_signing_secret(secret)

    @property
    def onlineconvert_callback_timing(self) -> CallbackTiming:
        """The schedule Online-Convert callbacks are delivered on."""
        return self._onlineconvert.callback_timing

    def set_onlineconvert_callback_timing(self, timing: CallbackTiming | None) -> None:
        """Online-Convert callbacks on `timing`; None (the default) is the service's own,
        ``onlineconvert.CALLBACK_TIMING``: 3 s per attempt, retries 10 s apart, 10 tries, a
        4xx answer final. Tests shorten the spacing with
        ``dataclasses.replace(CALLBACK_TIMING, retry_seconds=...)``."""
        self._onlineconvert.set_callback_timing(timing)

    def set_aws_endpoint(self, url: str | None) -> None:
        """Where Online-Convert ``amazons3`` tasks, which name no endpoint, reach S3: the
        offline stand-in for AWS (moto in DevStack)."""
        self._aws_endpoint = url

    def wait_idle(self, timeout: float = 30) -> None:
        """Block until every job has ended and its callbacks (duplicates and delayed ones
        included) were delivered or given up; TimeoutError otherwise."""
        self._backend.wait_idle(timeout)

    def deliver_dropped(self) -> int:
        """Send the callbacks the drop_callbacks fault kept back (late, genuine deliveries);
        returns how many. Set the fault off first, or they are dropped again."""
        return self._backend.deliver_dropped()

    def forget_job(self, job_id: str) -> None:
        """Delete a job (for CloudConvert v1 its process) as providers do some hours after it
        ended: looking it up answers 404 from then on."""
        process_job = self._cloudconvert_v1.forget(job_id)
        if not self._backend.forget(process_job or job_id):
            raise KeyError(job_id)

    def jobs(self) -> list[dict[str, Any]]:
        """Every CloudConvert v2 job, oldest first, as GET /v2/jobs/{id} returns it (without
        `data`)."""
        with self._backend.lock:
            return [self._cloudconvert_v2.render_job(job)
                    for job in self._backend.jobs(CLOUDCONVERT_V2)]

    def provider_jobs(self, provider: str) -> list[dict[str, Any]]:
        """Every job of one dialect, named as in rules (cloudconvert, cloudconvert_v1,
        freeconvert, onlineconvert, and any a package added), oldest first, as that dialect's
        API shows it (a CloudConvert v1 job as its process status)."""
        dialect = self.dialects[provider]
        with self._backend.lock:
            return [dialect.render_job(job) for job in self._backend.jobs(dialect.backend_name)]

    def job_count(self) -> int:
        """How many jobs were ever created (every dialect)."""
        return self._backend.job_count()

    def deliveries(self) -> list[dict[str, Any]]:
        """Every callback attempt: {job_id, event, status (None on network error), attempt,
        url}."""
        return [
            {"job_id": d.job_id, "event": d.event, "status": d.status, "attempt": d.attempt,
             "url": d.url}
            for d in self._backend.deliveries()
        ]

    def requests(self) -> list[dict[str, Any]]:
        """Every API request (everything outside /files/), in the order answered:
        {time (time.monotonic() at arrival), method, path (no query), status (int, or
        "timeout" for an answer held by the timeout fault), retry_after (header or None)}."""
        return self._journal.requests()

    def downloads(self) -> list[dict[str, Any]]:
        """Every GET below /files/: {time (time.monotonic() at arrival), path, status,
        dropped (cut short by the drop fault)}."""
        return self._journal.downloads()

    def serve_file(self, path: Path, filename: str) -> str:
        """Serve the file at `path` (read from disk at each download, never loaded into
        memory, never deleted by the sandbox) and return its download URL; downloads obey
        the drop fault like export/url files."""
        return self.url + self._files.add(FileBlob(filename, path=Path(path)))


def serve(port: int, api_key: str, signing_secret: str, host: str = "127.0.0.1") -> None:
    """Run a sandbox in the foreground until Ctrl-C."""
    with Sandbox(api_key=api_key, signing_secret=signing_secret, host=host, port=port) as sandbox:
        print(f"convbridge sandbox on {sandbox.url} (CloudConvert v2: {sandbox.url}/v2, "
              f"its sync API: {sandbox.sync_url}/v2, "
              f"CloudConvert v1: {sandbox.url}/v1, FreeConvert: {sandbox.url}/freeconvert/v1, "
              f"Online-Convert: {sandbox.url}/onlineconvert/v2); Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
