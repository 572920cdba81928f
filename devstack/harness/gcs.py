"""GCS on fake-gcs-server, with uploads announced the deployed way: a Pub/Sub push request with
an OIDC token, posted over HTTP to the GCS trigger behind a local Function URL. Without a Pub/Sub
emulator the harness plays Pub/Sub's part: it builds the envelope Pub/Sub sends for a Cloud
Storage notification (the object resource as fake-gcs-server serves it, base64 in
``message.data``) and signs the token with a throwaway RSA key. The trigger checks the token
exactly as deployed; only its certificate source differs, pointed by CONVBRIDGE_PUBSUB_CERTS_URL
at a loopback server that publishes the key's certificate as Google's v1 certs endpoint does. The
bridge's own service-account key is generated too, and stored in (moto) Secrets Manager as a
deployment stores the real one. So is the dedicated export key a rule with
``hand_over_account: true`` hands CloudConvert for ``export/google-cloud-storage``, under a
secret of its own; the provider sandbox is pointed at fake-gcs-server to run that export.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import boto3
import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

from devstack.harness.base import StorageHarness
from devstack.lambda_local import FunctionUrlServer
from devstack.loopback import LoopbackRequest, LoopbackServer, Reply
from devstack.servers_gcs import FakeGcsServer

if TYPE_CHECKING:
    from devstack.stack import DevStack

REGION = "us-east-1"
PROJECT = "convbridge-local"
SECRET_NAME = "convbridge/gcs-service-account"
#: the dedicated (not scoped) key handed to providers for rules that opt in
EXPORT_SECRET_NAME = "convbridge/gcs-export-key"
#: what the push subscription's OIDC token is minted for (Pub/Sub's "audience" setting)
PUSH_AUDIENCE = "https://convbridge.local/gcs-trigger"
#: the service account the push subscription signs its tokens as
PUSH_SERVICE_ACCOUNT = f"pubsub-push@{PROJECT}.iam.gserviceaccount.com"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/convbridge-gcs-trigger"
GOOGLE_ISSUER = "https://accounts.google.com"


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def service_account_key(name: str = "convbridge-bridge", project: str = PROJECT) -> dict[str, str]:
    """A throwaway service-account JSON key in the layout Google issues, with a fresh RSA key."""
    email = f"{name}@{project}.iam.gserviceaccount.com"
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": secrets.token_hex(20),
        "private_key": _pem(_rsa_key()),
        "client_email": email,
        "client_id": str(secrets.randbelow(10**21)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
                                + quote(email),
        "universe_domain": "googleapis.com",
    }


class LocalOidcIssuer:
    """Stands in for Google's token signer: an RSA key, its self-signed certificate (published
    as ``{key id: PEM}``, the v1 certs format), and tokens with the claims Pub/Sub sends."""

    def __init__(self) -> None:
        self._key = _rsa_key()
        self.key_id = secrets.token_hex(20)
        now = datetime.now(UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "convbridge local issuer")])
        certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self._key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=2))
            .sign(self._key, hashes.SHA256())
        )
        self.certificate_pem = certificate.public_bytes(serialization.Encoding.PEM).decode()

    def certs(self) -> dict[str, str]:
        return {self.key_id: self.certificate_pem}

    def token(self, *, audience: str = PUSH_AUDIENCE, email: str = PUSH_SERVICE_ACCOUNT,
              email_verified: object = True, issuer: str = GOOGLE_ISSUER,
              issued_at: int | None = None, lifetime: int = 3600) -> str:
        """A signed token like Pub/Sub's; each argument can be made wrong for a test."""
        now = int(time.time()) if issued_at is None else issued_at
        subject = str(10**20 + secrets.randbelow(10**20))
        claims = {"aud": audience, "azp": subject, "email": email,
                  "email_verified": email_verified, "exp": now + lifetime, "iat": now,
                  "iss": issuer, "sub": subject}
        signer = crypt.RSASigner(self._key, key_id=self.key_id)
        token: bytes = jwt.encode(signer, claims)
        return token.decode()


class CertsServer(LoopbackServer):
    """Serves an issuer's certificates on loopback, as Google's certs endpoint does (with a
    Cache-Control max-age), and counts the fetches."""

    def __init__(self, issuer: LocalOidcIssuer) -> None:
        super().__init__()
        self.issuer = issuer
        self.fetches = 0

    @property
    def url(self) -> str:
        return f"{self.base_url}/oauth2/v1/certs"

    def answer(self, request: LoopbackRequest) -> Reply:
        if request.method != "GET":
            return Reply(405, {"error": "method not allowed"})
        self.fetches += 1
        return Reply(200, self.issuer.certs(), content_type="application/json; charset=UTF-8",
                     headers={"Cache-Control": "public, max-age=21600, must-revalidate"})


def pubsub_push_envelope(resource: dict[str, Any], *, event_type: str = "OBJECT_FINALIZE",
                         delivery_attempt: int | None = None) -> dict[str, Any]:
    """The body Pub/Sub pushes for a Cloud Storage notification (payload format JSON_API_V1)
    about the object ``resource`` describes."""
    message_id = str(10**16 + secrets.randbelow(9 * 10**16))
    published = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    envelope: dict[str, Any] = {
        "message": {
            "attributes": {
                "bucketId": resource["bucket"],
                "eventTime": resource.get("updated", published),
                "eventType": event_type,
                "notificationConfig": f"projects/_/buckets/{resource['bucket']}"
                                      "/notificationConfigs/1",
                "objectGeneration": str(resource["generation"]),
                "objectId": resource["name"],
                "payloadFormat": "JSON_API_V1",
            },
            "data": base64.b64encode(json.dumps(resource).encode()).decode(),
            "messageId": message_id,
            "message_id": message_id,
            "publishTime": published,
            "publish_time": published,
        },
        "subscription": SUBSCRIPTION,
    }
    if delivery_attempt is not None:
        envelope["deliveryAttempt"] = delivery_attempt
    return envelope


class GcsHarness(StorageHarness):
    storage: ClassVar[str] = "gcs"
    trigger_function: ClassVar[str] = "gcs_trigger"
    title: ClassVar[str] = "GCS (fake-gcs-server)"
    delivery: ClassVar[str] = "Pub/Sub push (OIDC token) -> GCS trigger"

    def __init__(self, location: str = "convbridge-demo", *,
                 hand_over_account: bool = False) -> None:
        super().__init__(location)
        self.server = FakeGcsServer()
        self.issuer = LocalOidcIssuer()
        self.key = service_account_key()
        #: a different service account from the signing one, as a deployment must use
        self.export_key = service_account_key("convbridge-export")
        self.hand_over_account = hand_over_account
        self.certs_server: CertsServer | None = None
        self._client: Any = None
        #: the GCS trigger behind a local Function URL, started by the first push
        self.push_server: FunctionUrlServer | None = None

    def start(self, stack: DevStack) -> None:
        self.server.start()
        self.certs_server = CertsServer(self.issuer).start()
        self.client.create_bucket(self.location)
        stack.sandbox.set_gcs_endpoint(self.server.endpoint_url)

    def stop(self) -> None:
        if self.push_server is not None:
            self.push_server.stop()
            self.push_server = None
        if self.certs_server is not None:
            self.certs_server.stop()
            self.certs_server = None
        self.server.stop()
        self._client = None

    def env(self, stack: DevStack) -> dict[str, str]:
        assert self.certs_server is not None, "start() first"
        return {
            "CONVBRIDGE_GCS_ENDPOINT": self.server.endpoint_url,
            "CONVBRIDGE_GCS_SERVICE_ACCOUNT_SECRET": SECRET_NAME,
            "CONVBRIDGE_GCS_EXPORT_KEY_SECRET": EXPORT_SECRET_NAME,
            "CONVBRIDGE_PUBSUB_AUDIENCE": PUSH_AUDIENCE,
            "CONVBRIDGE_PUBSUB_SERVICE_ACCOUNT": PUSH_SERVICE_ACCOUNT,
            "CONVBRIDGE_PUBSUB_CERTS_URL": self.certs_server.url,
        }

    def seed(self, stack: DevStack) -> None:
        secrets_manager = boto3.client("secretsmanager", region_name=REGION)
        # the harness holds a throwaway JSON key, so it opts into key signing
        secrets_manager.create_secret(Name=SECRET_NAME, SecretString=json.dumps(
            {**self.key, "signing": "json_key"}))
        secrets_manager.create_secret(Name=EXPORT_SECRET_NAME,
                                      SecretString=json.dumps(self.export_key))

    def default_rules(self, read_grant: str) -> str:
        rules = super().default_rules(read_grant)
        if self.hand_over_account:
            rules += "    hand_over_account: true\n"
        return rules

    @property
    def client(self) -> Any:
        """The harness's own view of the bucket (as a user's tools would see it)."""
        if self._client is None:
            self._client = storage.Client(
                project=PROJECT, credentials=AnonymousCredentials(),
                client_options={"api_endpoint": self.server.endpoint_url})
        return self._client

    def upload(self, key: str, data: bytes) -> None:
        self.client.bucket(self.location).blob(key).upload_from_string(data)

    def read_bytes(self, key: str) -> bytes | None:
        blob = self.client.bucket(self.location).get_blob(key)
        return None if blob is None else bytes(blob.download_as_bytes())

    def objects(self, prefix: str = "") -> dict[str, int]:
        return {blob.name: int(blob.size) for blob in
                self.client.list_blobs(self.location, prefix=prefix)}

    def resource(self, key: str) -> dict[str, Any]:
        """The object's JSON API resource, exactly what a JSON_API_V1 notification carries."""
        answer = httpx.get(f"{self.server.endpoint_url}/storage/v1/b/{self.location}/o/"
                           f"{quote(key, safe='')}")
        answer.raise_for_status()
        found: dict[str, Any] = answer.json()
        return found

    def event_for(self, key: str) -> dict[str, Any]:
        return pubsub_push_envelope(self.resource(key))

    def describe(self, key: str) -> str:
        return f"gs://{self.location}/{key}"

    def push(self, stack: DevStack, body: dict[str, Any] | bytes, *,
             token: str | None = None, headers: dict[str, str] | None = None) -> httpx.Response:
        """POST ``body`` to the GCS trigger's Function URL as Pub/Sub does, with a valid token
        unless ``token`` is given ("" sends no Authorization header)."""
        if self.push_server is None:
            self.push_server = FunctionUrlServer(stack.trigger_module.handler).start()
        token = self.issuer.token() if token is None else token
        sent = {"Content-Type": "application/json", "User-Agent": "APIs-Google"}
        if token:
            sent["Authorization"] = f"Bearer {token}"
        sent.update(headers or {})
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.post(self.push_server.url + "/", content=content, headers=sent, timeout=60)

    def deliver(self, stack: DevStack, event: dict[str, Any]) -> dict[str, Any]:
        answer = self.push(stack, event)
        return {"http_status": answer.status_code, **answer.json()}
