"""Which identity signs Azure SAS grants: a user delegation key (the default) or, opted in per
storage account, the account key.

A user-delegation SAS is signed with a short-lived delegation key that the bridge gets from the
storage account with a Microsoft Entra ID token; no long-lived secret of the account is held.
The Entra token comes from workload identity federation: AWS STS ``GetWebIdentityToken`` mints a
JWT for the Lambda role, and the Entra token endpoint takes it as the client assertion of the
app registration (``tenant_id``, ``client_id``) that trusts that role. A client certificate from
Secrets Manager as a fallback assertion is not built yet.

Account-key signing stays available for an account whose secret says
``"signing": "account_key"``; it is never chosen because federation failed. Every failure of the
exchange (STS refuses, Entra answers 4xx, an expired answer) is a :class:`GrantError` naming the
step, never the token.
"""

from __future__ import annotations

import threading
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


class EntraTokenSource:
    """Entra ID access tokens for Azure Storage by the client-credentials flow with a federated
    client assertion, cached until shortly before they expire. It is also an azure-core token
    credential (``get_token``), so the bridge's own blob I/O uses the same identity."""

    def __init__(self, *, tenant_id: str, client_id: str, assertion: Callable[[], str],
                 authority: str = ENTRA_AUTHORITY, http: httpx.Client | None = None,
                 clock: Clock = _utcnow) -> None:
        self.tenant_id = tenant_id
        self.client_id = client_id
        self._assertion = assertion
        self.token_url = f"{authority.rstrip('/')}/{tenant_id}/oauth2/v2.0/token"
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
    describes: ClassVar[str] = "a user delegation key (Entra ID token, no account key held)"
    tokens: EntraTokenSource
    clock: Clock = _utcnow
    _key: tuple[datetime, UserDelegationKey] | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

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
    """The signing identity an account's secret configures: ``"signing": "account_key"`` opts
    into the account key; otherwise ``tenant_id`` and ``client_id`` of the Entra app that
    trusts the bridge's role are required (an account key in the secret is not used)."""
    value = secret()
    signing = value.optional("signing") or "user_delegation"
    if signing == "account_key":
        value.field("account_key")  # present now, not at the first grant
        return AccountKeySigning(account_key=lambda: secret().field("account_key"))
    if signing != "user_delegation":
        raise ConfigError(f"the Azure account secret's \"signing\" is {signing!r}; it is "
                          "\"user_delegation\" (the default) or \"account_key\"")
    missing = [name for name in ("tenant_id", "client_id") if not value.optional(name)]
    if missing:
        raise ConfigError(
            f"the Azure account secret lacks {', '.join(missing)}: grants are signed with a "
            "user delegation key got through Entra ID federation unless the secret says "
            "\"signing\": \"account_key\"")
    tokens = EntraTokenSource(
        tenant_id=value.field("tenant_id"), client_id=value.field("client_id"),
        assertion=lambda: StsWebIdentityAssertion(sts_client())(),
        authority=authority, http=http)
    return UserDelegationSigning(tokens=tokens)
