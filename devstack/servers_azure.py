"""Azurite as a local Azure Blob Storage for the demo and the tests: the ``azurite-blob`` script
that ``make servers`` installs into node_modules, run in memory on a free port of 127.0.0.1
with the emulator's well-known account. It enforces service SAS signatures, permissions,
resource scope, expiry and the HTTPS-only flag (see ../shared/EMULATORS.md), which is what
makes it useful for proving grants narrow. Like the servers in :mod:`devstack.servers`, it
raises :class:`ServerStartError` saying why when it cannot start, so tests fail, never skip.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from devstack.servers import LOCALHOST, ServerStartError, _Server, _tail, free_ports

ROOT = Path(__file__).resolve().parent.parent
#: Azurite's built-in account and key, published in its documentation; not a secret.
ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = ("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/"
               "KBHBeksoGMGw==")
INSTALL_HINT = "run `make servers` (npm installs Azurite into node_modules)"


def find_azurite() -> Path:
    binary = ROOT / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        raise ServerStartError(f"Azurite is not installed (no {binary}); {INSTALL_HINT}")
    if shutil.which("node") is None:
        raise ServerStartError(f"Azurite needs node on PATH; {INSTALL_HINT} on a machine "
                               "with Node.js")
    return binary


class AzuriteServer(_Server):
    """One ``azurite-blob`` process. ``endpoint_url`` is the account's blob endpoint
    (path style: ``http://127.0.0.1:PORT/devstoreaccount1``)."""

    account_name = ACCOUNT_NAME
    account_key = ACCOUNT_KEY

    def __init__(self, *, start_timeout: float = 20.0, binary: Path | None = None) -> None:
        self.start_timeout = start_timeout
        self.binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._stderr: Path | None = None
        self.startup_seconds = 0.0

    @property
    def endpoint_url(self) -> str:
        if self._port is None:
            raise RuntimeError("AzuriteServer is not running; call start() first")
        return f"http://{LOCALHOST}:{self._port}/{ACCOUNT_NAME}"

    def start(self) -> None:
        if self._process is not None:
            return
        binary = self.binary or find_azurite()
        (self._port,) = free_ports(1)
        # --skipApiVersionCheck: current azure-storage-blob speaks a newer API version than
        # Azurite knows and would get 400 on every call; --inMemoryPersistence: nothing on disk
        command = [str(binary), "--blobHost", LOCALHOST, "--blobPort", str(self._port),
                   "--inMemoryPersistence", "--disableTelemetry", "--silent",
                   "--skipApiVersionCheck"]
        handle, name = tempfile.mkstemp(prefix="convbridge-azurite-", suffix=".log")
        self._stderr = Path(name)
        started = time.monotonic()
        with open(handle, "wb") as log:
            try:
                self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                                 stderr=subprocess.STDOUT,
                                                 start_new_session=True)
            except OSError as exc:
                self.stop()
                raise ServerStartError(f"cannot run Azurite {binary}: {exc}; "
                                       f"{INSTALL_HINT}") from exc
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
                    f"Azurite exited with status {code} before port {self._port} answered "
                    f"({INSTALL_HINT}); last output lines:\n{_tail(self._stderr)}")
            if _is_azurite(f"{self.endpoint_url}?comp=list"):
                self.startup_seconds = time.monotonic() - started
                return
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"Azurite did not answer on port {self._port} within "
                    f"{self.start_timeout:.0f} s; last output lines:\n{_tail(self._stderr)}")
            time.sleep(0.05)

    def stop(self) -> None:
        atexit.unregister(self.stop)
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                # in memory: nothing to flush; the whole group, in case node forked
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
        if self._stderr is not None:
            self._stderr.unlink(missing_ok=True)
            self._stderr = None
        self._port = None

    def __repr__(self) -> str:
        state = self.endpoint_url if self._port is not None else "stopped"
        return f"AzuriteServer({state})"


def _is_azurite(url: str) -> bool:
    """True once Azurite itself answers (an unsigned List Containers gets 403); the Server
    header rules out another process that took the port first."""
    try:
        with urllib.request.urlopen(url, timeout=1) as answer:
            server = str(answer.headers.get("Server", ""))
    except urllib.error.HTTPError as exc:
        server = str(exc.headers.get("Server", ""))
    except OSError:
        return False
    return server.startswith("Azurite")
