"""Azurite as a local Azure Blob Storage for the demo and the tests: the ``azurite-blob`` script
that ``make servers`` installs into node_modules, run in memory on a free port of 127.0.0.1
with the emulator's well-known account. It enforces service SAS signatures, permissions,
resource scope, expiry and the HTTPS-only flag (see ../shared/EMULATORS.md), which is what
makes it useful for proving grants narrow. Like the servers in :mod:`devstack.servers`, it
raises :class:`ServerStartError` saying why when it cannot start, so tests fail, never skip.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import shutil
import ssl
import time
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


class AzuriteOAuthServer(AzuriteServer):
    """Azurite over HTTPS with ``--oauth basic``: it then accepts bearer tokens and serves Get
    User Delegation Key, so user-delegation SAS grants can be proven against it. The
    certificate is self-signed for 127.0.0.1, made at start into the working directory;
    ``ca_path`` is what clients must trust (``connection_verify`` for the Azure SDK,
    ``verify`` for httpx)."""

    label = "Azurite-oauth"

    @property
    def endpoint_url(self) -> str:
        if self._port is None:
            raise RuntimeError("AzuriteOAuthServer is not running; call start() first")
        return f"https://{LOCALHOST}:{self._port}/{ACCOUNT_NAME}"

    @property
    def ca_path(self) -> str:
        if self._workdir is None:
            raise RuntimeError("AzuriteOAuthServer is not running; call start() first")
        return str(self._workdir / "cert.pem")

    def command(self, binary: Path, ports: dict[str, int], workdir: Path) -> list[str]:
        cert, key = write_self_signed_cert(workdir)
        return [*super().command(binary, ports, workdir), "--cert", str(cert), "--key", str(key),
                "--oauth", "basic"]

    def answers(self) -> bool:
        context = ssl.create_default_context(cafile=self.ca_path)
        return _is_azurite(f"{self.endpoint_url}?comp=list", context)


def write_self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, valid for a day, as PEM files in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOCALHOST)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOCALHOST))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def azurite_bearer_token(*, tenant_id: str = "00000000-0000-0000-0000-000000000001",
                         object_id: str = "00000000-0000-0000-0000-00000000000a",
                         lifetime_seconds: int = 3600) -> str:
    """A JWT as Azurite's basic OAuth check accepts it: an Entra issuer, the storage audience
    and a current lifetime. Azurite does not verify signatures, so it is unsigned."""
    now = int(time.time())
    claims = {"aud": "https://storage.azure.com", "iss": f"https://sts.windows.net/{tenant_id}/",
              "iat": now - 60, "nbf": now - 60, "exp": now + lifetime_seconds,
              "oid": object_id, "tid": tenant_id}

    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def _is_azurite(url: str, context: ssl.SSLContext | None = None) -> bool:
    """True once Azurite itself answers (an unsigned List Containers gets 403); the Server
    header rules out another process that took the port first."""
    try:
        with urllib.request.urlopen(url, timeout=1, context=context) as answer:
            server = str(answer.headers.get("Server", ""))
    except urllib.error.HTTPError as exc:
        server = str(exc.headers.get("Server", ""))
    except OSError:
        return False
    return server.startswith("Azurite")
