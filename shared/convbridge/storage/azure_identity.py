"""Which identity signs Azure SAS grants: a user delegation key (the default) or, opted in per
storage account, the account key.

A user-delegation SAS is signed with a short-lived delegation key that the bridge gets from the
storage account with a Microsoft Entra ID token; no long-lived secret of the account is held.
The Entra token comes from workload identity federation: AWS STS ``GetWebIdentityToken`` mints a
JWT for the Lambda role, and the Entra token endpoint takes it as the client assertion of the
app registration (``tenant_id``, ``client_id``) that trusts that role.

For an account that cannot federate, its secret says ``"signing": "client_certificate"`` and
holds a certificate registered on the app with its private key (``client_certificate``,
``client_certificate_key``, PEM): the bridge then signs the client assertion itself (a JWT,
PS256, naming the certificate by its SHA-256 thumbprint ``x5t#S256``, addressed to the tenant's
token endpoint, valid for minutes). Grants are still user-delegation SAS; only the proof the
Entra token is got with differs.

Account-key signing stays available for an account whose secret says
``"signing": "account_key"``. Neither opt-in is ever chosen because another way failed. Every
failure of the exchange (STS refuses, Entra answers 4xx, an expired answer or certificate) is a
:class:`GrantError` naming the step, never the token.
"""

from __future__ import annotations

import base64
import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import httpx

from convbridge.errors import ConfigError, GrantError

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient, UserDelegationKey

    from convbridge.secrets import SecretValue

SigningIdentity = Literal["account_key", "user_delegation"]
#: what proves the bridge to Entra ID: an AWS-issued token (the default) or its own certificate
EntraCredential = Literal["workload_identity_federation", "client_certificate"]
#: the values of an account secret's "signing": who stands behind the account's grants
SECRET_SIGNING = ("user_delegation", "client_certificate", "account_key")
ENTRA_AUTHORITY = "https://login.microsoftonline.com"
STORAGE_SCOPE = "https://storage.azure.com/.default"
#: the audience Entra expects in a federated client assertion
FEDERATION_AUDIENCE = "api://AzureADTokenExchange"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: an Entra token is renewed this long before it expires, so no request carries a dying one
TOKEN_RENEW_BEFORE = timedelta(minutes=5)
#: how long a delegation key is asked for when no grant needs longer
KEY_LIFETIME = timedelta(hours=2)
#: a cached delegation key is reused for this fraction of its lifetime, then renewed
KEY_REUSE_FRACTION = 0.5
#: Azure's limit on a user delegation key's lifetime
KEY_MAX_LIFETIME = timedelta(days=7)
#: start times are set this far back: the service's clock may run behind ours
CLOCK_SKEW = timedelta(minutes=5)
#: how long a certificate-signed client assertion is valid: one token request needs seconds
ASSERTION_LIFETIME = timedelta(minutes=10)

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class EntraToken:
    token: str = field(repr=False)
    expires_at: datetime


class StsWebIdentityAssertion:
    """The client assertion: a JWT from STS ``GetWebIdentityToken`` for the bridge's own role,
    addressed to Entra's federation audience."""

    def __init__(self, sts_client: Any, *, audience: str = FEDERATION_AUDIENCE,
                 duration_seconds: int = 300) -> None:
        self._sts = sts_client
        self._audience = audience
        self._duration_seconds = duration_seconds

    def __call__(self) -> str:
        import botocore.exceptions

        try:
            answer = self._sts.get_web_identity_token(
                Audience=[self._audience], SigningAlgorithm="RS256",
                DurationSeconds=self._duration_seconds)
            return str(answer["WebIdentityToken"])
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "Error")
            raise GrantError(f"AWS STS refused a web identity token for Entra ID federation: "
                             f"{code}") from exc
        except (botocore.exceptions.BotoCoreError, KeyError) as exc:
            raise GrantError("cannot get a web identity token from AWS STS for Entra ID "
                             f"federation: {type(exc).__name__}") from exc


def entra_token_url(authority: str, tenant_id: str) -> str:
    """The tenant's v2.0 token endpoint: where tokens are asked for, and the audience of a
    certificate-signed client assertion."""
    return f"{authority.rstrip('/')}/{tenant_id}/oauth2/v2.0/token"


@dataclass(frozen=True)
class ClientCertificate:
    """A certificate registered on the Entra app and its private key, as PEM text."""

    certificate_pem: str = field(repr=False)
    private_key_pem: str = field(repr=False)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class CertificateAssertion:
    """The client assertion for an account that cannot federate: a JWT the bridge signs with the
    private key of a certificate registered on the app (``alg`` PS256, ``x5t#S256`` the
    certificate's SHA-256 thumbprint), ``iss`` and ``sub`` the app, ``aud`` the token endpoint,
    a fresh ``jti``, valid for :data:`ASSERTION_LIFETIME`. The certificate is read on each use,
    so a rotated one is picked up."""

    def __init__(self, certificate: Callable[[], ClientCertificate], *, client_id: str,
                 token_url: str, clock: Clock = _utcnow,
                 lifetime: timedelta = ASSERTION_LIFETIME) -> None:
        self._certificate = certificate
        self.client_id = client_id
        self.token_url = token_url
        self._clock = clock
        self._lifetime = lifetime

    def __call__(self) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        certificate, key = load_client_certificate(self._certificate(), GrantError)
        now = self._clock()
        if certificate.not_valid_after_utc <= now:
            raise GrantError(f"the client certificate of Entra ID app {self.client_id} expired "
                             f"at {certificate.not_valid_after_utc.isoformat()}")
        header = {"alg": "PS256", "typ": "JWT",
                  "x5t#S256": _b64url(certificate.fingerprint(hashes.SHA256()))}
        issued = int(now.timestamp())
        claims = {"aud": self.token_url, "iss": self.client_id, "sub": self.client_id,
                  "jti": str(uuid.uuid4()), "iat": issued, "nbf": issued,
                  "exp": issued + int(self._lifetime.total_seconds())}
        signing_input = ".".join(_b64url(json.dumps(part, separators=(",", ":")).encode())
                                 for part in (header, claims))
        signature = key.sign(signing_input.encode(), padding.PSS(
            mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size),
            hashes.SHA256())
        return f"{signing_input}.{_b64url(signature)}"


def load_client_certificate(found: ClientCertificate,
                            error: type[ConfigError] | type[GrantError]) -> tuple[Any, Any]:
    """The certificate and its RSA private key, checked to belong together; ``error`` is what a
    bad pair raises (a ConfigError at start, a GrantError once running). Messages name the
    problem, never the PEM."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        certificate = x509.load_pem_x509_certificate(found.certificate_pem.encode())
        key = serialization.load_pem_private_key(found.private_key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise error("the Azure account secret's client_certificate or client_certificate_key "
                    "is not an unencrypted PEM certificate and private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise error("the Azure account secret's client_certificate_key is not an RSA key, "
                    "which Entra ID needs to verify a PS256 client assertion")
    public = certificate.public_key()
    if (not isinstance(public, rsa.RSAPublicKey)
            or key.public_key().public_numbers() != public.public_numbers()):
        raise error("the Azure account secret's client_certificate_key is not the private key "
                    "of its client_certificate")
    return certificate, key


class EntraTokenSource:
    """Entra ID access tokens for Azure Storage by the client-credentials flow with a federated
    client assertion, cached until shortly before they expire. It is also an azure-core token
    credential (``get_token``), so the bridge's own blob I/O uses the same identity."""

    def __init__(self, *, tenant_id: str, client_id: str, assertion: Callable[[], str],
                 authority: str = ENTRA_AUTHORITY, http: httpx.Client | None = None,
                 clock: Clock = _utcnow,
                 credential: EntraCredential = "workload_identity_federation") -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self._assertion = assertion
        #: what the assertion proves the app with, for the grant's description
        self.credential: EntraCredential = credential
        self.token_url = entra_token_url(authority, tenant_id)
        self._http = http or httpx.Client(timeout=10.0)
        self._clock = clock
        self._cached: EntraToken | None = None
        self._lock = threading.Lock()

    def token(self) -> EntraToken:
        with self._lock:
            now = self._clock()
            if self._cached is None or self._cached.expires_at - TOKEN_RENEW_BEFORE <= now:
                self._cached = self._exchange(now)
            return self._cached

    def _exchange(self, now: datetime) -> EntraToken:
        form = {"grant_type": "client_credentials", "client_id": self.client_id,
                "scope": STORAGE_SCOPE, "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self._assertion()}
        try:
            answer = self._http.post(self.token_url, data=form)
        except httpx.HTTPError as exc:
            raise GrantError(f"cannot reach the Entra ID token endpoint {self.token_url}: "
                             f"{type(exc).__name__}") from exc
        if answer.status_code != 200:
            raise GrantError(f"Entra ID refused a token for app {self.client_id} in tenant "
                             f"{self.tenant_id}: HTTP {answer.status_code} "
                             f"{_entra_error(answer)}")
        try:
            body = answer.json()
            token, lifetime = str(body["access_token"]), int(body["expires_in"])
        except (ValueError, KeyError, TypeError) as exc:
            raise GrantError("the Entra ID token endpoint answered without a usable "
                             "access_token/expires_in") from exc
        if lifetime <= TOKEN_RENEW_BEFORE.total_seconds():
            raise GrantError(f"the Entra ID token endpoint answered a token that expires in "
                             f"{lifetime} s: expired or too short-lived to use")
        return EntraToken(token, now + timedelta(seconds=lifetime))

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        found = self.token()
        return AccessToken(found.token, int(found.expires_at.timestamp()))


def _entra_error(answer: httpx.Response) -> str:
    """Entra's error code (``invalid_client``, ``AADSTS...``): its description can quote the
    assertion's claims, so only the code and the first AADSTS number are kept."""
    try:
        body = answer.json()
    except ValueError:
        return ""
    code = str(body.get("error", "")) if isinstance(body, dict) else ""
    codes = body.get("error_codes") if isinstance(body, dict) else None
    if isinstance(codes, list) and codes:
        code = f"{code} (AADSTS{codes[0]})"
    return code


@dataclass
class AccountKeySigning:
    """The account key signs SAS grants and authorises the bridge's own I/O (opted in)."""

    identity: ClassVar[SigningIdentity] = "account_key"
    describes: ClassVar[str] = "the storage account key (opted in: \"signing\": \"account_key\")"
    account_key: Callable[[], str]

    def service_credential(self, account_name: str) -> Any:
        return {"account_name": account_name, "account_key": self.account_key()}

    def sas_signing(self, service: BlobServiceClient, expires: datetime) -> dict[str, Any]:
        return {"account_key": self.account_key()}


@dataclass
class UserDelegationSigning:
    """A user delegation key, got with an Entra token, signs SAS grants; the same token
    authorises the bridge's own I/O. A key is reused for a fraction of its lifetime and only
    while it outlives the grant being signed (a SAS is void once its key expires)."""

    identity: ClassVar[SigningIdentity] = "user_delegation"
    tokens: EntraTokenSource
    clock: Clock = _utcnow
    _key: tuple[datetime, UserDelegationKey] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def describes(self) -> str:
        if self.tokens.credential == "client_certificate":
            return ("a user delegation key (Entra ID token by client certificate, opted in: "
                    "\"signing\": \"client_certificate\"; no account key held)")
        return "a user delegation key (Entra ID token by federation, no account key held)"

    def service_credential(self, account_name: str) -> Any:
        return self.tokens

    def sas_signing(self, service: BlobServiceClient, expires: datetime) -> dict[str, Any]:
        return {"user_delegation_key": self.delegation_key(service, expires)}

    def delegation_key(self, service: BlobServiceClient, covering: datetime) -> UserDelegationKey:
        with self._lock:
            now = self.clock()
            if self._key is not None:
                obtained, key = self._key
                key_expiry = _parse_time(key.signed_expiry)
                renew_at = obtained + (key_expiry - obtained) * KEY_REUSE_FRACTION
                if now < renew_at and key_expiry >= covering:
                    return key
            expiry = min(max(now + KEY_LIFETIME, covering + CLOCK_SKEW), now + KEY_MAX_LIFETIME)
            if expiry < covering:
                raise GrantError("a user-delegation SAS cannot outlive its key, and Azure keeps "
                                 "a delegation key for 7 days at most")
            key = _get_delegation_key(service, now - CLOCK_SKEW, expiry)
            self._key = (now, key)
            return key


def _get_delegation_key(service: BlobServiceClient, start: datetime,
                        expiry: datetime) -> UserDelegationKey:
    import azure.core.exceptions as azure_errors

    try:
        return service.get_user_delegation_key(start, expiry)
    except GrantError:
        raise
    except azure_errors.HttpResponseError as exc:
        code = getattr(exc, "error_code", None) or "Error"
        raise GrantError(f"the storage account refused a user delegation key: {code} "
                         f"(HTTP {exc.status_code})") from exc
    except azure_errors.AzureError as exc:
        raise GrantError(f"cannot get a user delegation key: {type(exc).__name__}") from exc


def _parse_time(value: str | None) -> datetime:
    if not value:
        return datetime.min.replace(tzinfo=UTC)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


AzureCredentialSource = AccountKeySigning | UserDelegationSigning


def credential_source(secret: Callable[[], SecretValue], *, sts_client: Callable[[], Any],
                      authority: str = ENTRA_AUTHORITY,
                      http: httpx.Client | None = None) -> AzureCredentialSource:
    """The signing identity an account's secret configures. By default (``"signing":
    "user_delegation"``) ``tenant_id`` and ``client_id`` of the Entra app that trusts the
    bridge's role; ``"client_certificate"`` adds the app's certificate and key
    (``client_certificate``, ``client_certificate_key``); ``"account_key"`` opts into the
    account key. Fields of another choice in the secret are not used."""
    value = secret()
    signing = value.optional("signing") or "user_delegation"
    if signing == "account_key":
        value.field("account_key")  # present now, not at the first grant
        return AccountKeySigning(account_key=lambda: secret().field("account_key"))
    if signing not in SECRET_SIGNING:
        raise ConfigError(f"the Azure account secret's \"signing\" is {signing!r}; it is "
                          "\"user_delegation\" (the default), \"client_certificate\" or "
                          "\"account_key\"")
    missing = [name for name in ("tenant_id", "client_id") if not value.optional(name)]
    if missing:
        raise ConfigError(
            f"the Azure account secret lacks {', '.join(missing)}: grants are signed with a "
            "user delegation key got with an Entra ID token unless the secret says "
            "\"signing\": \"account_key\"")
    tenant_id, client_id = value.field("tenant_id"), value.field("client_id")
    if signing == "client_certificate":
        def certificate() -> ClientCertificate:
            found = secret()
            return ClientCertificate(found.field("client_certificate"),
                                     found.field("client_certificate_key"))

        load_client_certificate(certificate(), ConfigError)  # usable now, not at the first grant
        token_url = entra_token_url(authority, tenant_id)
        return UserDelegationSigning(tokens=EntraTokenSource(
            tenant_id=tenant_id, client_id=client_id, authority=authority, http=http,
            assertion=CertificateAssertion(certificate, client_id=client_id,
                                           token_url=token_url),
            credential="client_certificate"))
    tokens = EntraTokenSource(
        tenant_id=tenant_id, client_id=client_id,
        assertion=lambda: StsWebIdentityAssertion(sts_client())(),
        authority=authority, http=http)
    return UserDelegationSigning(tokens=tokens)
