"""Which identity signs GCS read URLs: a federated service account through IAM Credentials
``signBlob`` (the default) or, opted in, a service-account JSON key.

Federated signing holds no key. The GCS secret carries the external-account configuration that
``gcloud iam workload-identity-pools create-cred-config --aws`` writes (``type:
external_account``, ``audience``, ``subject_token_type``, ``token_url``,
``service_account_impersonation_url``, an AWS ``credential_source``) and the
``service_account_email`` it impersonates. google-auth turns the function's own AWS role
credentials into a signed ``GetCallerIdentity`` request, trades it at Google STS for a federated
token and that for the service account's access token. The V4 string-to-sign is built by
google-cloud-storage as for a key; only its signature comes from
``POST {IAM Credentials}/v1/projects/-/serviceAccounts/{email}:signBlob``. The same access token
authorises the bridge's own GCS requests (the relayed writes). The service account needs only
``roles/iam.serviceAccountTokenCreator`` on itself and object access on the watched buckets.

A JSON key signs only when the secret says ``"signing": "json_key"``; it is never chosen because
federation failed. Every failure of the exchange (STS refuses, IAM refuses the impersonation, an
expired token, signBlob answering 403) is a :class:`GrantError` naming the step, never a token.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import quote

import httpx

from convbridge.errors import ConfigError, GrantError, SecretError
from convbridge.storage._vendor import VendorModule

if TYPE_CHECKING:
    import google.auth.credentials as _auth_credentials
    import google.auth.exceptions as _auth_errors
    import google.auth.transport.requests as _auth_requests
    import google.oauth2.service_account as _service_account

    from convbridge.secrets import SecretValue
else:
    _auth_credentials = VendorModule("google.auth.credentials")
    _auth_errors = VendorModule("google.auth.exceptions")
    _auth_requests = VendorModule("google.auth.transport.requests")
    _service_account = VendorModule("google.oauth2.service_account")

SigningIdentity = Literal["json_key", "federated"]
IAM_CREDENTIALS_URL = "https://iamcredentials.googleapis.com"
#: top-level fields of an external-account configuration file that google-auth reads
EXTERNAL_ACCOUNT_FIELDS = ("type", "audience", "subject_token_type", "token_url",
                           "service_account_impersonation_url", "credential_source",
                           "service_account_impersonation", "token_info_url",
                           "quota_project_id", "universe_domain")
#: of those, the ones that are objects (Secrets Manager fields arrive as JSON text)
NESTED_FIELDS = frozenset({"credential_source", "service_account_impersonation"})


class FederatedSigning:
    """Signs with IAM Credentials ``signBlob`` as ``service_account_email``, authorised by the
    federated ``credentials``. It is a google-auth ``Signing`` (registered, not inherited, so
    this module imports no Google SDK until used), which is what google-cloud-storage's
    ``generate_signed_url`` asks of its ``credentials``."""

    identity: ClassVar[SigningIdentity] = "federated"

    def __init__(self, *, service_account_email: str, credentials: Any,
                 iam_credentials_url: str = IAM_CREDENTIALS_URL,
                 http: httpx.Client | None = None) -> None:
        _auth_credentials.Signing.register(FederatedSigning)
        self.service_account_email = service_account_email
        #: google-auth credentials whose token IAM Credentials and GCS accept
        self.credentials = credentials
        self.sign_url = (f"{iam_credentials_url.rstrip('/')}/v1/projects/-/serviceAccounts/"
                         f"{quote(service_account_email, safe='@')}:signBlob")
        self._http = http or httpx.Client(timeout=10.0)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FederatedSigning({self.service_account_email!r})"

    @property
    def signer_email(self) -> str:
        return self.service_account_email

    @property
    def signer(self) -> None:
        """No local signer: the private key stays with Google."""
        return None

    def access_token(self) -> str:
        """The federated access token, refreshed when google-auth says it is stale."""
        with self._lock:
            if not self.credentials.valid:
                try:
                    self.credentials.refresh(_auth_requests.Request())
                except _auth_errors.GoogleAuthError as exc:
                    raise GrantError(f"the token exchange for {self.service_account_email} "
                                     f"failed: {_auth_reason(exc)}") from exc
            if not self.credentials.valid or not self.credentials.token:
                raise GrantError(f"the token exchange for {self.service_account_email} "
                                 "answered an expired or empty access token")
            return str(self.credentials.token)

    def sign_bytes(self, message: bytes) -> bytes:
        body = {"payload": base64.b64encode(message).decode()}
        headers = {"Authorization": f"Bearer {self.access_token()}"}
        try:
            answer = self._http.post(self.sign_url, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise GrantError(f"cannot reach IAM Credentials signBlob for "
                             f"{self.service_account_email}: {type(exc).__name__}") from exc
        if answer.status_code != 200:
            raise GrantError(f"IAM Credentials refused to sign as {self.service_account_email}: "
                             f"HTTP {answer.status_code} {_google_status(answer)}")
        try:
            return base64.b64decode(answer.json()["signedBlob"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise GrantError("IAM Credentials signBlob answered without a usable "
                             "signedBlob") from exc


def _auth_reason(exc: BaseException) -> str:
    """google-auth's RefreshError and OAuthError carry the STS answer (error code and
    description, never a token); a refused impersonation adds IAM's answer body, of which only
    the ``status`` (``PERMISSION_DENIED``) is kept. Other errors are named by type only."""
    if isinstance(exc, (_auth_errors.RefreshError, _auth_errors.OAuthError)) and exc.args:
        reason = str(exc.args[0])[:300]
        status = _error_status(exc.args[1]) if len(exc.args) > 1 else ""
        return f"{reason}: {status}" if status else reason
    return type(exc).__name__


def _error_status(body: object) -> str:
    """A Google API error body's ``error.status``, or "" when it has none."""
    try:
        error = json.loads(body).get("error", {}) if isinstance(body, str | bytes) else {}
    except (ValueError, AttributeError):
        return ""
    return str(error.get("status", "")) if isinstance(error, dict) else ""


def _google_status(answer: httpx.Response) -> str:
    """A Google API error's ``status`` (``PERMISSION_DENIED``), not its message."""
    return _error_status(answer.content)


@dataclass(frozen=True)
class GcsIdentity:
    """What the GCS secret configures: who signs read URLs (``signer``, a google-auth
    ``Signing``) and the credentials of the bridge's own GCS requests."""

    identity: SigningIdentity
    signer: Any
    client_credentials: Any = field(repr=False)
    project_id: str | None = None


def external_account_info(name: str, secret: SecretValue) -> dict[str, Any]:
    """The external-account configuration in secret ``name``, as google-auth reads it."""
    info: dict[str, Any] = {}
    for key in EXTERNAL_ACCOUNT_FIELDS:
        value = secret.optional(key)
        if value is None:
            continue
        if key in NESTED_FIELDS:
            try:
                info[key] = json.loads(value)
            except ValueError:
                raise SecretError(f"secret {name}: {key} is not a JSON object") from None
        else:
            info[key] = value
    if info.get("type") != "external_account":
        raise ConfigError(
            f"secret {name} is not an external-account configuration (\"type\": "
            "\"external_account\"): read URLs are signed through IAM Credentials signBlob by a "
            "federated identity unless the secret says \"signing\": \"json_key\"")
    missing = [key for key in ("audience", "subject_token_type", "token_url",
                               "credential_source") if key not in info]
    if missing:
        raise ConfigError(f"secret {name} lacks {', '.join(missing)} of its external-account "
                          "configuration")
    return info


def federated_credentials(name: str, info: dict[str, Any]) -> Any:
    """google-auth's credentials for the configuration: AWS-sourced (``environment_id``
    ``aws1``) or file/URL-sourced (identity pool)."""
    from google.auth import aws, identity_pool

    kind = aws if "environment_id" in info["credential_source"] else identity_pool
    try:
        return kind.Credentials.from_info(
            info, scopes=["https://www.googleapis.com/auth/cloud-platform"])
    except (ValueError, _auth_errors.GoogleAuthError) as exc:
        raise ConfigError(f"secret {name} is not a usable external-account configuration: "
                          f"{type(exc).__name__}: {exc}") from exc


#: Fields of a service-account JSON key that google-auth reads (the others are URLs for humans).
KEY_REQUIRED = ("client_email", "private_key", "token_uri")
KEY_OPTIONAL = ("type", "project_id", "private_key_id", "client_id", "universe_domain")


def signing_credentials(name: str, secret: SecretValue) -> Any:
    """The service account in secret ``name``: the JSON key file as Google issues it (the
    explicit ``json_key`` opt-in)."""
    info = {field: secret.field(field) for field in KEY_REQUIRED}
    info.update({field: value for field in KEY_OPTIONAL if (value := secret.optional(field))})
    try:
        # google-auth ships type hints but leaves this constructor unannotated
        return _service_account.Credentials.from_service_account_info(info)  # type: ignore[no-untyped-call]
    except (ValueError, _auth_errors.GoogleAuthError) as exc:
        # the type only: google-auth's parser messages may quote the key
        raise SecretError(f"secret {name} is not a usable service-account key: "
                          f"{type(exc).__name__}") from exc


def gcs_identity(name: str, secret: SecretValue, *,
                 iam_credentials_url: str = IAM_CREDENTIALS_URL,
                 http: httpx.Client | None = None) -> GcsIdentity:
    """The identity secret ``name`` configures: ``"signing": "json_key"`` opts into the JSON key
    it holds; otherwise (``"federated"``, the default) an external-account configuration and
    the ``service_account_email`` to sign as (a JSON key in the secret is not used)."""
    signing = secret.optional("signing") or "federated"
    if signing == "json_key":
        key = signing_credentials(name, secret)
        return GcsIdentity("json_key", key, key, key.project_id)
    if signing != "federated":
        raise ConfigError(f"secret {name}: \"signing\" is {signing!r}; it is \"federated\" "
                          "(the default) or \"json_key\"")
    info = external_account_info(name, secret)
    email = secret.optional("service_account_email")
    if not email:
        raise ConfigError(f"secret {name} lacks service_account_email, the service account "
                          "whose signBlob signs read URLs")
    credentials = federated_credentials(name, info)
    signer = FederatedSigning(service_account_email=email, credentials=credentials,
                              iam_credentials_url=iam_credentials_url, http=http)
    return GcsIdentity("federated", signer, credentials, secret.optional("project_id"))
