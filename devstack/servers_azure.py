"""Azurite as a local Azure Blob Storage for the demo and the tests: the ``azurite-blob`` script
that ``make servers`` installs into node_modules, run in memory on a free port of 127.0.0.1
with the emulator's well-known account. It enforces service SAS signatures, permissions,
resource scope, expiry and the HTTPS-only flag (see ../shared/EMULATORS.md), which is what
makes it useful for proving grants narrow. Like the servers in :mod:`devstack.servers`, it
raises :class:`ServerStartError` saying why when it cannot start, so tests fail, never skip.
:class:`LocalEntra` stands in for the Entra ID token endpoint the bridge trades its client
assertion at, and hands out tokens Azurite's ``--oauth basic`` accepts.
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
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from convbridge.storage.azure_identity import ASSERTION_TYPE, FEDERATION_AUDIENCE
from devstack.loopback import LoopbackRequest, LoopbackServer, Reply
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


def app_certificate(*, valid_for: datetime.timedelta = datetime.timedelta(days=30),
                    common_name: str = "convbridge-bridge") -> tuple[str, str]:
    """A self-signed certificate and its RSA private key (PEM), as one uploads to an Entra app
    registration; ``valid_for`` negative gives one that has already expired."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    start = min(now, now + valid_for) - datetime.timedelta(days=1)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(now + valid_for)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()).decode())


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


@dataclass(frozen=True)
class FederatedCredential:
    """An Entra app's federated identity credential: whose tokens it takes as assertions, and
    the public key of that issuer (Entra fetches it from the issuer's JWKS)."""

    issuer: str
    subject: str
    public_key: Any
    audience: str = FEDERATION_AUDIENCE


@dataclass
class _App:
    object_id: str
    #: SHA-256 thumbprints of the registered certificates (base64url, as x5t#S256 gives them)
    certificates: dict[str, Any] = field(default_factory=dict)
    federated: list[FederatedCredential] = field(default_factory=list)


class EntraRefusal(Exception):
    """An answer Entra gives instead of a token: HTTP status, OAuth error, AADSTS number."""

    def __init__(self, error: str, code: int, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error, self.code, self.description, self.status = error, code, description, status


class LocalEntra(LoopbackServer):
    """A stand-in for one Entra ID tenant's v2.0 token endpoint (client-credentials grant with a
    client assertion), on loopback. Apps are registered with certificates and federated
    credentials; an assertion is accepted only if its signature verifies against the registered
    certificate it names (``x5t#S256``; PS256 or RS256) or against the key of a federated
    credential's issuer, and its audience, issuer, subject and validity window are right. The
    token it hands out is one Azurite's ``--oauth basic`` accepts (unsigned: Azurite checks no
    signature), carrying the app's object id. Refusals are HTTP 400 with Entra's error shape
    and an AADSTS number of the kind Entra answers; ``token_lifetime`` sets ``expires_in``
    (0: an expired token). Every form received is kept in ``requests``."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__()
        self.tenant_id = tenant_id
        self.token_lifetime = 3599
        self.requests: list[dict[str, str]] = []
        self._apps: dict[str, _App] = {}

    @property
    def authority(self) -> str:
        return self.base_url

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/{self.tenant_id}/oauth2/v2.0/token"

    def _app(self, client_id: str) -> _App:
        return self._apps.setdefault(client_id, _App(object_id=str(uuid.uuid4())))

    def register_certificate(self, client_id: str, certificate_pem: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        certificate = x509.load_pem_x509_certificate(certificate_pem.encode())
        thumbprint = _b64url(certificate.fingerprint(hashes.SHA256()))
        self._app(client_id).certificates[thumbprint] = certificate

    def register_federated(self, client_id: str, credential: FederatedCredential) -> None:
        self._app(client_id).federated.append(credential)

    def answer(self, request: LoopbackRequest) -> Reply:
        if request.method != "POST" or request.path != f"/{self.tenant_id}/oauth2/v2.0/token":
            return Reply(404, {"error": "not_found"})
        form = dict(parse_qsl(request.body.decode("utf-8", "replace")))
        self.requests.append(form)
        try:
            app = self._verify(form)
        except EntraRefusal as refusal:
            return Reply(refusal.status, {
                "error": refusal.error, "error_codes": [refusal.code],
                "error_description": f"AADSTS{refusal.code}: {refusal.description}"})
        return Reply(200, {"token_type": "Bearer", "expires_in": self.token_lifetime,
                           "ext_expires_in": self.token_lifetime,
                           "access_token": azurite_bearer_token(
                               tenant_id=self.tenant_id, object_id=app.object_id,
                               lifetime_seconds=max(self.token_lifetime, 1))})

    def _verify(self, form: dict[str, str]) -> _App:
        if form.get("grant_type") != "client_credentials":
            raise EntraRefusal("unsupported_grant_type", 70003, "the grant type is not "
                               "supported here")
        if form.get("scope") != "https://storage.azure.com/.default":
            raise EntraRefusal("invalid_scope", 70011, "the scope is not valid")
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise EntraRefusal("invalid_request", 7000218, "the request body must contain a "
                               "client_assertion")
        app = self._apps.get(form.get("client_id", ""))
        if app is None:
            raise EntraRefusal("unauthorized_client", 700016, "application not found in the "
                               "directory")
        header, claims, signed, signature = _split_jwt(form.get("client_assertion", ""))
        if "x5t#S256" in header:
            certificate = app.certificates.get(str(header["x5t#S256"]))
            if certificate is None:
                raise EntraRefusal("invalid_client", 700027, "the certificate named by the "
                                   "client assertion is not registered on the application")
            _check_signature(certificate.public_key(), header, signed, signature)
            if claims.get("iss") != form["client_id"] or claims.get("sub") != form["client_id"]:
                raise EntraRefusal("invalid_client", 700021, "the client assertion's issuer "
                                   "or subject is not the client_id")
            if claims.get("aud") != self.token_url:
                raise EntraRefusal("invalid_client", 50012, "the client assertion's audience "
                                   "is not this token endpoint")
        else:
            credential = next((found for found in app.federated
                               if found.issuer == claims.get("iss")
                               and found.subject == claims.get("sub")), None)
            if credential is None:
                raise EntraRefusal("invalid_client", 700213, "no matching federated identity "
                                   "record found for the presented assertion")
            _check_signature(credential.public_key, header, signed, signature)
            audiences = claims.get("aud")
            if credential.audience not in (audiences if isinstance(audiences, list)
                                           else [audiences]):
                raise EntraRefusal("invalid_client", 700212, "no matching federated identity "
                                   "record found for the presented assertion audience")
        now = time.time()
        if not (_number(claims.get("nbf", 0)) - 300 <= now < _number(claims.get("exp"))):
            raise EntraRefusal("invalid_client", 700024, "the client assertion is not within "
                               "its valid time range")
        return app


class LocalAwsWebIdentityIssuer:
    """Stands in for AWS's outbound web identity federation: the issuer STS
    ``GetWebIdentityToken`` names and the RSA key it signs with, issuing RS256 JWTs for a role
    (``sub`` its ARN) as the tokens the bridge hands Entra as federated client assertions.
    :meth:`credential` is the federated identity credential an Entra app trusting that role
    holds."""

    issuer = "https://a1b2c3d4-0000-0000-0000-000000000000.tokens.sts.global.api.aws"

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def token(self, subject: str, *, audience: str = FEDERATION_AUDIENCE,
              lifetime_seconds: int = 300) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        now = int(time.time())
        header = {"alg": "RS256", "typ": "JWT", "kid": "local"}
        claims = {"iss": self.issuer, "sub": subject, "aud": audience, "iat": now,
                  "nbf": now, "exp": now + lifetime_seconds}
        signed = ".".join(_b64url(json.dumps(part).encode()) for part in (header, claims))
        signature = self.private_key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signed}.{_b64url(signature)}"

    def credential(self, subject: str) -> FederatedCredential:
        return FederatedCredential(self.issuer, subject, self.private_key.public_key())


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def _split_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    try:
        header_part, claims_part, signature_part = token.split(".")
        header, claims = json.loads(_unb64url(header_part)), json.loads(_unb64url(claims_part))
        signature = _unb64url(signature_part)
    except ValueError as exc:
        raise EntraRefusal("invalid_request", 50027, "the client assertion is not a "
                           "well-formed JWT") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise EntraRefusal("invalid_request", 50027, "the client assertion is not a "
                           "well-formed JWT")
    return header, claims, f"{header_part}.{claims_part}".encode(), signature


def _check_signature(public_key: Any, header: dict[str, Any], signed: bytes,
                     signature: bytes) -> None:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    schemes = {"PS256": padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                    salt_length=hashes.SHA256.digest_size),
               "RS256": padding.PKCS1v15()}
    scheme = schemes.get(str(header.get("alg")))
    if scheme is None:
        raise EntraRefusal("invalid_client", 5002738, "the client assertion's algorithm is "
                           "not supported")
    try:
        public_key.verify(signature, signed, scheme, hashes.SHA256())
    except InvalidSignature:
        raise EntraRefusal("invalid_client", 700027, "the client assertion failed signature "
                           "validation") from None
