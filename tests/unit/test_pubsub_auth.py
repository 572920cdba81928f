"""Push requests are believed only with a token Google would have signed for our subscription.

Tokens are signed with locally generated RSA keys (devstack's LocalOidcIssuer) whose
certificates are published the way Google's v1 certs endpoint publishes its own, so the checks
run exactly as deployed: signature, issuer, audience, email, email_verified, iat/exp.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

import httpx
import pytest

from convbridge.errors import CallbackSignatureError, ConfigError
from convbridge.triggers.pubsub import (
    REFETCH_SECONDS,
    CertificatesUnavailable,
    GoogleCertificates,
    PushAuthenticator,
    _certs_url,
)
from devstack.harness.gcs import PUSH_AUDIENCE, PUSH_SERVICE_ACCOUNT, LocalOidcIssuer

ISSUER = LocalOidcIssuer()
#: a second key, for tokens signed by someone else
STRANGER = LocalOidcIssuer()


def authenticator(issuer: LocalOidcIssuer = ISSUER) -> PushAuthenticator:
    return PushAuthenticator(audience=PUSH_AUDIENCE, service_account=PUSH_SERVICE_ACCOUNT,
                             certificates=lambda key_id: issuer.certs())


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, str], claims: dict[str, object], signature: bytes = b"") -> str:
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(claims).encode())
    return f"{head}.{body}.{b64url(signature)}"


def test_a_token_pubsub_would_send_is_accepted() -> None:
    claims = authenticator().verify(bearer(ISSUER.token()))
    assert claims["email"] == PUSH_SERVICE_ACCOUNT and claims["aud"] == PUSH_AUDIENCE


def test_header_name_and_scheme_are_case_insensitive() -> None:
    assert authenticator().verify({"Authorization": f"bearer {ISSUER.token()}"})


def test_email_is_compared_without_regard_to_case() -> None:
    assert authenticator().verify(bearer(ISSUER.token(email=PUSH_SERVICE_ACCOUNT.upper())))


def other_issuer_token_with_our_key_id() -> str:
    """Signed by a different key but claiming to be ours: a forged token."""
    forged = STRANGER.token()
    header = b64url(json.dumps({"alg": "RS256", "kid": ISSUER.key_id,
                                         "typ": "JWT"}).encode())
    return ".".join([header, *forged.split(".")[1:]])


def tampered_token() -> str:
    head, body, signature = ISSUER.token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["email"] = "attacker@evil.example"
    return f"{head}.{b64url(json.dumps(claims).encode())}.{signature}"


def alg_none_token() -> str:
    now = int(time.time())
    return unsigned({"alg": "none", "typ": "JWT"},
                    {"aud": PUSH_AUDIENCE, "email": PUSH_SERVICE_ACCOUNT, "email_verified": True,
                     "iss": "https://accounts.google.com", "iat": now, "exp": now + 600})


def hs256_token() -> str:
    """The classic confusion: an HMAC keyed with the public certificate."""
    now = int(time.time())
    claims = {"aud": PUSH_AUDIENCE, "email": PUSH_SERVICE_ACCOUNT, "email_verified": True,
              "iss": "https://accounts.google.com", "iat": now, "exp": now + 600}
    head = b64url(json.dumps({"alg": "HS256", "kid": ISSUER.key_id}).encode())
    body = b64url(json.dumps(claims).encode())
    mac = hmac.new(ISSUER.certificate_pem.encode(), f"{head}.{body}".encode(), hashlib.sha256)
    return f"{head}.{body}.{b64url(mac.digest())}"


REFUSED: dict[str, tuple[Callable[[], dict[str, str]], str]] = {
    "missing header": (lambda: {}, "no Bearer token"),
    "empty bearer": (lambda: {"authorization": "Bearer "}, "no Bearer token"),
    "basic auth": (lambda: {"authorization": "Basic dXNlcjpwYXNz"}, "no Bearer token"),
    "not a jwt": (lambda: bearer("definitely-not-a-jwt"), "not a JWT"),
    "wrong audience": (lambda: bearer(ISSUER.token(audience="https://other.example/push")),
                       "wrong audience"),
    "wrong email": (lambda: bearer(ISSUER.token(email="someone@evil.iam.gserviceaccount.com")),
                    "not the configured push service account"),
    "email not verified": (lambda: bearer(ISSUER.token(email_verified=False)),
                           "email is not verified"),
    "email_verified as a string": (lambda: bearer(ISSUER.token(email_verified="true")),
                                   "email is not verified"),
    "expired": (lambda: bearer(ISSUER.token(issued_at=int(time.time()) - 7200)), "expired"),
    "issued in the future": (lambda: bearer(ISSUER.token(issued_at=int(time.time()) + 600)),
                             "too early"),
    "wrong issuer": (lambda: bearer(ISSUER.token(issuer="https://evil.example")),
                     "not Google"),
    "bad signature": (lambda: bearer(other_issuer_token_with_our_key_id()),
                      "Could not verify token signature"),
    "tampered claims": (lambda: bearer(tampered_token()), "Could not verify token signature"),
    "unknown key id": (lambda: bearer(STRANGER.token()), "not found"),
    "alg none": (lambda: bearer(alg_none_token()), "Unsupported signature algorithm"),
    "hs256 with the certificate": (lambda: bearer(hs256_token()),
                                   "Unsupported signature algorithm"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_tokens_google_would_not_have_sent_us_are_refused_with_401(case: str) -> None:
    headers, expected = REFUSED[case]
    with pytest.raises(CallbackSignatureError) as refused:
        authenticator().verify(headers())
    assert refused.value.status == 401
    assert expected in str(refused.value)


def test_the_token_never_appears_in_a_refusal() -> None:
    token = ISSUER.token(audience="https://other.example/push")
    with pytest.raises(CallbackSignatureError) as refused:
        authenticator().verify(bearer(token))
    assert token not in str(refused.value)
    assert token.split(".")[2] not in repr(refused.value)


# --------------------------------------------------------------------------- certificates


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def certs_endpoint(issuer: LocalOidcIssuer, *, max_age: int | None = 21600,
                   status: int = 200, body: bytes | None = None) -> tuple[httpx.Client, list[int]]:
    fetches: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        fetches.append(1)
        headers = {"Cache-Control": f"public, max-age={max_age}, must-revalidate"} if (
            max_age is not None) else {}
        content = body if body is not None else json.dumps(issuer.certs()).encode()
        return httpx.Response(status, content=content, headers=headers)

    return httpx.Client(transport=httpx.MockTransport(answer)), fetches


def test_certificates_are_fetched_once_and_kept_for_their_max_age() -> None:
    client, fetches = certs_endpoint(ISSUER, max_age=600)
    clock = Clock()
    certs = GoogleCertificates("https://www.googleapis.com/oauth2/v1/certs", client, clock=clock)
    auth = PushAuthenticator(audience=PUSH_AUDIENCE, service_account=PUSH_SERVICE_ACCOUNT,
                             certificates=certs)
    for _ in range(20):
        auth.verify(bearer(ISSUER.token()))
    assert len(fetches) == 1
    clock.now += 599
    auth.verify(bearer(ISSUER.token()))
    assert len(fetches) == 1
    clock.now += 2
    auth.verify(bearer(ISSUER.token()))
    assert len(fetches) == 2


def test_a_rotated_key_is_picked_up_but_made_up_key_ids_cannot_hammer_google() -> None:
    rotated = LocalOidcIssuer()
    published = {ISSUER.key_id: ISSUER.certificate_pem}

    def answer(request: httpx.Request) -> httpx.Response:
        fetches.append(1)
        return httpx.Response(200, json=published,
                              headers={"Cache-Control": "public, max-age=21600"})

    fetches: list[int] = []
    clock = Clock()
    certs = GoogleCertificates("https://www.googleapis.com/oauth2/v1/certs",
                               httpx.Client(transport=httpx.MockTransport(answer)), clock=clock)
    auth = PushAuthenticator(audience=PUSH_AUDIENCE, service_account=PUSH_SERVICE_ACCOUNT,
                             certificates=certs)
    auth.verify(bearer(ISSUER.token()))
    clock.now += REFETCH_SECONDS
    published[rotated.key_id] = rotated.certificate_pem  # Google publishes its next key
    auth.verify(bearer(rotated.token()))
    assert len(fetches) == 2
    stranger = LocalOidcIssuer()
    for number in range(50):  # tokens naming keys nobody published
        stranger.key_id = f"made-up-{number}"
        with pytest.raises(CallbackSignatureError):
            auth.verify(bearer(stranger.token()))
    assert len(fetches) == 2


@pytest.mark.parametrize(("status", "body", "expected"), [
    (503, None, "answered HTTP 503"),
    (200, b"not json", "did not answer a {key id: PEM certificate} map"),
    (200, b'{"keys": [{"kid": "a", "n": "x", "e": "AQAB"}]}', "use Google's v1 certs URL"),
    (200, b"{}", "did not answer"),
])
def test_unusable_certificate_answers_fail_closed(status: int, body: bytes | None,
                                                  expected: str) -> None:
    client, _ = certs_endpoint(ISSUER, status=status, body=body)
    certs = GoogleCertificates("https://www.googleapis.com/oauth2/v1/certs", client)
    auth = PushAuthenticator(audience=PUSH_AUDIENCE, service_account=PUSH_SERVICE_ACCOUNT,
                             certificates=certs)
    with pytest.raises(CertificatesUnavailable, match=expected.replace("{", r"\{")):
        auth.verify(bearer(ISSUER.token()))


def test_unreachable_certificates_fail_closed() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    certs = GoogleCertificates("https://www.googleapis.com/oauth2/v1/certs",
                               httpx.Client(transport=httpx.MockTransport(refuse)))
    with pytest.raises(CertificatesUnavailable, match="ConnectError"):
        certs(ISSUER.key_id)


@pytest.mark.parametrize(("url", "allowed"), [
    ("https://www.googleapis.com/oauth2/v1/certs", True),
    ("http://127.0.0.1:8080/certs", True),
    ("http://localhost/certs", True),
    ("http://www.googleapis.com/oauth2/v1/certs", False),
    ("ftp://example.com/certs", False),
])
def test_certificates_travel_over_https_unless_local(url: str, allowed: bool) -> None:
    if allowed:
        assert _certs_url(url) == url
    else:
        with pytest.raises(ConfigError, match="must be an https URL"):
            _certs_url(url)
