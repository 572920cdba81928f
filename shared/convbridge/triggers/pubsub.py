"""Pub/Sub push deliveries (and CloudEvents) of Cloud Storage notifications: authenticate first,
then parse and submit. Pub/Sub signs every push request with an OIDC token for the
subscription's service account (``Authorization: Bearer <JWT>``); before the body is parsed, the
token must be signed by one of Google's current keys, issued by accounts.google.com, for ``aud``
CONVBRIDGE_PUBSUB_AUDIENCE and ``email`` CONVBRIDGE_PUBSUB_SERVICE_ACCOUNT with
``email_verified`` true, and inside its ``iat``..``exp`` window. Google's certificates come from
CONVBRIDGE_PUBSUB_CERTS_URL (by default Google's v1 endpoint, a ``{key id: PEM certificate}``
map) and are kept as long as its Cache-Control allows. google-auth is imported only when a token
is checked, so loading this module costs no Google SDK.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlparse

import httpx

from convbridge.bridge import Bridge
from convbridge.errors import (
    CallbackError,
    CallbackSignatureError,
    CallbackTooLarge,
    ConfigError,
    ConvbridgeError,
)
from convbridge.events.pubsub import parse_push_request
from convbridge.http import deadline_from
from convbridge.pipeline import submit_all, summarize
from convbridge.runtime import (
    bridge,
    internal_error,
    raw_body,
    refusal,
    request_headers,
)

logger = logging.getLogger(__name__)

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
#: tolerated difference between Google's clock and ours when checking ``iat`` and ``exp``
CLOCK_SKEW_SECONDS = 30
#: how long certificates are kept when the answer says nothing, and at most
DEFAULT_CERT_SECONDS = 3600.0
MAX_CERT_SECONDS = 24 * 3600.0
#: a token naming an unknown key refetches the certificates at most this often, so tokens
#: with made-up key ids cannot turn every request into a fetch from Google
REFETCH_SECONDS = 60.0
#: Pub/Sub's default maxDeliveryAttempts before dead-lettering; the delivery that reaches it
#: reports a transient provider failure instead of asking for another delivery
FINAL_DELIVERY_ATTEMPT = 5
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
_MAX_AGE = re.compile(r"(?:^|,)\s*max-age\s*=\s*(\d+)", re.IGNORECASE)

CertificateSource = Callable[[str | None], Mapping[str, str]]


class CertificatesUnavailable(ConvbridgeError):
    """Google's signing certificates could not be fetched: no token can be checked now."""


class GoogleCertificates:
    """Google's OIDC signing certificates, fetched on first use and kept as long as the answer's
    Cache-Control allows. A key id not in the cached set (Google rotates keys) refetches early,
    at most once per REFETCH_SECONDS. A failed fetch fails closed: no token is accepted."""

    def __init__(self, url: str, http: httpx.Client, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self._http = http
        self._clock = clock
        self._certs: dict[str, str] | None = None
        self._fetched = 0.0
        self._expires = 0.0
        self._lock = threading.Lock()

    def __call__(self, key_id: str | None) -> Mapping[str, str]:
        with self._lock:
            now = self._clock()
            unknown = key_id is not None and key_id not in (self._certs or {})
            if (self._certs is None or now >= self._expires
                    or (unknown and now - self._fetched >= REFETCH_SECONDS)):
                self._certs, lifetime = self._fetch()
                self._fetched = now
                self._expires = now + lifetime
            return self._certs

    def _fetch(self) -> tuple[dict[str, str], float]:
        try:
            answer = self._http.get(self.url)
        except httpx.HTTPError as exc:
            raise CertificatesUnavailable(f"cannot fetch Google's signing certificates from "
                                          f"{self.url}: {type(exc).__name__}") from exc
        if answer.status_code != 200:
            raise CertificatesUnavailable(f"Google's signing certificates: {self.url} answered "
                                          f"HTTP {answer.status_code}")
        try:
            document = answer.json()
        except ValueError:
            document = None
        if not isinstance(document, dict) or not document or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in document.items()):
            raise CertificatesUnavailable(f"{self.url} did not answer a {{key id: PEM "
                                          "certificate} map (use Google's v1 certs URL)")
        found = _MAX_AGE.search(answer.headers.get("Cache-Control", ""))
        lifetime = min(float(found.group(1)), MAX_CERT_SECONDS) if found else DEFAULT_CERT_SECONDS
        return document, lifetime


class PushAuthenticator:
    """Checks the OIDC token of one push request; the certificate source is injected, so tests
    sign tokens with keys of their own."""

    def __init__(self, *, audience: str, service_account: str, certificates: CertificateSource,
                 clock_skew_seconds: int = CLOCK_SKEW_SECONDS) -> None:
        self.audience = audience
        self.service_account = service_account
        self._certificates = certificates
        self._clock_skew = clock_skew_seconds

    def verify(self, headers: Mapping[str, str]) -> Mapping[str, Any]:
        """The token's claims, or CallbackSignatureError (401) saying what was wrong. Never
        logs or returns the token itself."""
        from google.auth import exceptions, jwt

        token = _bearer_token(headers)
        try:
            header = jwt.decode_header(token)  # type: ignore[no-untyped-call]
        except (ValueError, exceptions.GoogleAuthError) as exc:
            raise CallbackSignatureError("push token is not a JWT") from exc
        key_id = header.get("kid") if isinstance(header, dict) else None
        certs = self._certificates(key_id if isinstance(key_id, str) else None)
        try:
            claims = jwt.decode(token, certs=certs,  # type: ignore[no-untyped-call]
                                audience=self.audience,
                                clock_skew_in_seconds=self._clock_skew)
        except (ValueError, exceptions.GoogleAuthError) as exc:
            raise CallbackSignatureError(f"push token refused: {exc}") from exc
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise CallbackSignatureError(f"push token issued by {claims.get('iss')!r}, "
                                         "not Google")
        email = claims.get("email")
        if not isinstance(email, str) or email.casefold() != self.service_account.casefold():
            raise CallbackSignatureError(f"push token is for {email!r}, not the configured "
                                         "push service account")
        if claims.get("email_verified") is not True:
            raise CallbackSignatureError("push token's email is not verified")
        result: Mapping[str, Any] = claims
        return result


_AUTHENTICATORS: weakref.WeakKeyDictionary[Bridge, PushAuthenticator] = (
    weakref.WeakKeyDictionary())
_AUTHENTICATORS_LOCK = threading.Lock()


def authenticator_for(current: Bridge) -> PushAuthenticator:
    """One authenticator (and certificate cache) per Bridge, i.e. per cold start."""
    with _AUTHENTICATORS_LOCK:
        found = _AUTHENTICATORS.get(current)
        if found is None:
            settings = current.settings
            url = settings.value("PUBSUB_CERTS_URL") or GOOGLE_CERTS_URL
            found = PushAuthenticator(
                audience=settings.required("PUBSUB_AUDIENCE",
                                           "to check that push tokens were minted for us"),
                service_account=settings.required("PUBSUB_SERVICE_ACCOUNT",
                                                  "to check who signed push requests"),
                certificates=GoogleCertificates(_certs_url(url), current.http),
            )
            _AUTHENTICATORS[current] = found
        return found


def answer_push(headers: Mapping[str, str], body: bytes, context: Any = None) -> tuple[int, str]:
    """(status code, JSON body) for one push request. Pub/Sub acknowledges 102, 200, 201, 202
    and 204 and redelivers anything else with backoff until the message expires or goes to the
    dead-letter topic, hence:

    * 413 (body over CONVBRIDGE_MAX_CALLBACK_BYTES) and 401 (no valid token) start nothing;
      the redeliveries make a misconfigured subscription visible instead of losing uploads.
    * 400: an authenticated body that is neither a push envelope nor a CloudEvent, i.e.
      something other than the expected subscription is wired here (payload unwrapping on).
    * 200 for every delivery that was understood, including messages that start nothing
      (deletes, metadata updates, malformed notifications): the reason is logged and the
      message acknowledged, since delivering the same bytes again cannot change the answer.
    * 503 when a submission needs another try (a concurrent delivery holds the claim, the
      provider is unavailable before the last attempt, our storage or secrets fail); claims
      make sure a redelivery starts at most one job.
    """
    current = bridge()
    try:
        if len(body) > current.settings.max_callback_bytes:
            raise CallbackTooLarge(f"push body of {len(body)} bytes is over the limit")
        authenticator_for(current).verify(headers)
    except CallbackError as exc:
        logger.warning("push delivery refused: %s", exc)
        return refusal(exc)
    except ConvbridgeError:
        logger.exception("push delivery could not be authenticated")
        return 503, json.dumps({"error": "temporarily unavailable"})
    delivery = parse_push_request(headers, body)
    for reason in delivery.events.ignored:
        logger.info("push delivery ignored: %s", reason)
    if delivery.form is None:
        return 400, json.dumps({"error": "neither a Pub/Sub push envelope nor a CloudEvent"})
    if not delivery.events.objects:
        return 200, json.dumps(summarize([]))
    attempt = delivery.delivery_attempt
    final = attempt is None or attempt >= FINAL_DELIVERY_ATTEMPT
    current.claims.register_lambda_context(context)
    with deadline_from(getattr(context, "get_remaining_time_in_millis", None)):
        submissions = submit_all(current, delivery.events.objects, final_attempt=final)
    again = [s for s in submissions if s.status in {"retry", "error"}]
    if again:
        logger.warning("asking Pub/Sub to deliver again: %s",
                       "; ".join(f"{s.ref}: {s.reason}" for s in again))
        return 503, json.dumps(summarize(submissions))
    return 200, json.dumps(summarize(submissions))


def handle_function_url(event: Mapping[str, Any], context: Any) -> dict[str, Any]:
    """A Lambda Function URL (payload 2.0) request in, its answer out; whatever the request
    holds, an answer, never an exception."""
    try:
        method = ((event.get("requestContext") or {}).get("http") or {}).get("method", "POST")
        if method != "POST":
            status, body = 405, json.dumps({"error": "push deliveries are POST requests"})
        else:
            status, body = answer_push(request_headers(event), raw_body(event), context)
    except CallbackError as exc:
        logger.warning("push delivery refused: %s", exc)
        status, body = refusal(exc)
    except Exception:
        status, body = internal_error("push delivery")
    return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": body}


def _bearer_token(headers: Mapping[str, str]) -> str:
    value = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise CallbackSignatureError("push request has no Bearer token")
    return token.strip()


def _certs_url(url: str) -> str:
    """HTTPS, or plain HTTP to this machine for local testing: certificates fetched over an
    open network could be swapped, and with them any token accepted."""
    parts = urlparse(url)
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        return url
    raise ConfigError(f"CONVBRIDGE_PUBSUB_CERTS_URL={url!r} must be an https URL")
