"""Azurite as a local Azure Blob Storage for the demo and the tests: the ``azurite-blob`` script
that ``make servers`` installs into node_modules, run in memory on a free port of 127.0.0.1
with the emulator's well-known account. It enforces service SAS signatures, permissions,
resource scope, expiry and the HTTPS-only flag (see ../shared/EMULATORS.md), which is what
makes it useful for proving grants narrow. Like the servers in :mod:`devstack.servers`, it
raises :class:`ServerStartError` saying why when it cannot start, so tests fail, never skip.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from pathlib import Path

from devstack.servers import LOCALHOST, ProcessServer, ServerStartError

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


class AzuriteServer(ProcessServer):
    """One ``azurite-blob`` process. ``endpoint_url`` is the account's blob endpoint
    (path style: ``http://127.0.0.1:PORT/devstoreaccount1``)."""

    label = "Azurite"
    install_hint = INSTALL_HINT
    account_name = ACCOUNT_NAME
    account_key = ACCOUNT_KEY

    @property
    def endpoint_url(self) -> str:
        if self._port is None:
            raise RuntimeError("AzuriteServer is not running; call start() first")
        return f"http://{LOCALHOST}:{self._port}/{ACCOUNT_NAME}"

    def find_binary(self) -> Path:
        return find_azurite()

    def command(self, binary: Path, ports: dict[str, int], workdir: Path) -> list[str]:
        port = ports["http"]
        # --skipApiVersionCheck: current azure-storage-blob speaks a newer API version than
        # Azurite knows and would get 400 on every call; --inMemoryPersistence: nothing on disk
        return [str(binary), "--blobHost", LOCALHOST, "--blobPort", str(port),
                "--inMemoryPersistence", "--disableTelemetry", "--silent",
                "--skipApiVersionCheck"]

    def answers(self) -> bool:
        return _is_azurite(f"{self.endpoint_url}?comp=list")


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
