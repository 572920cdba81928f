"""Event Grid webhook deliveries over HTTPS: authentication, the two subscription handshakes,
size and syntax checks, then :func:`convbridge.pipeline.submit_all` for the blobs created.

Event Grid cannot sign its deliveries to a plain webhook, so the endpoint URL carries a secret,
``?code=...``, compared in constant time with the value of the Secrets Manager secret named by
``CONVBRIDGE_EVENT_GRID_SECRET`` (a JSON ``{"code": ...}`` or a plain string of at least 32
characters). Every request is checked, handshakes included, so nobody can use the endpoint to
validate a subscription of their own. The code is never logged. Microsoft Entra ID bearer-token
delivery (Event Grid's "AAD" webhook auth) is not implemented.

Answers: 401 unauthenticated, 413 over ``max_callback_bytes``, 400 not JSON (or a body marked
base64 that is not), 405 another method; for the Event Grid schema handshake
``{"validationResponse": code}``; for the CloudEvents abuse-protection ``OPTIONS`` the
``WebHook-Allowed-Origin`` and ``WebHook-Allowed-Rate`` headers, the origin echoed only when
it is a hostname (400 otherwise: it goes into a response header); otherwise 200 with what
each blob came to, or 503 when some blob met trouble worth a redelivery (Event Grid retries
5xx; duplicates are answered by the claims). After ``MAX_RECEIVES`` deliveries trouble is
reported instead of retried. Nothing raises out of :func:`answer_function_url`.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

from convbridge.errors import CallbackError, ConfigError, ConvbridgeError
from convbridge.events.event_grid import parse_event_grid, subscription_validation_code
from convbridge.http import deadline_from
from convbridge.pipeline import submit_all, summarize
from convbridge.providers.base import comparable_bytes
from convbridge.runtime import (
    MAX_RECEIVES,
    bridge,
    internal_error,
    raw_body,
    receive_count,
    request_headers,
)
from convbridge.secrets import SecretStore

logger = logging.getLogger(__name__)

SECRET_SETTING = "EVENT_GRID_SECRET"
CODE_PARAMETER = "code"
MIN_CODE_LENGTH = 32
JSON_HEADERS = {"Content-Type": "application/json"}
#: a DNS hostname: dot-separated labels of ASCII letters, digits and inner hyphens
_HOSTNAME = re.compile(r"(?=.{1,253}\Z)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                       r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)

Answer = tuple[int, dict[str, str], str]


def answer_function_url(event: Mapping[str, Any], context: Any = None) -> Answer:
    """(status, headers, body) for one Function URL (payload 2.0) request from Event Grid;
    whatever the request holds, an answer, never an exception."""
    try:
        http = (event.get("requestContext") or {}).get("http") or {}
        return answer_delivery(
            method=str(http.get("method", "")).upper(),
            headers=request_headers(event),
            query=str(event.get("rawQueryString") or ""),
            body=raw_body(event),
            context=context,
        )
    except CallbackError as exc:
        logger.warning("Event Grid delivery refused: %s", exc)
        return _json(exc.status, {"error": str(exc)})
    except Exception:
        status, body = internal_error("Event Grid delivery")
        return status, dict(JSON_HEADERS), body


def answer_delivery(*, method: str, headers: Mapping[str, str], query: str, body: bytes,
                    context: Any = None) -> Answer:
    current = bridge()
    try:
        expected = _endpoint_code(current.secrets, current.settings.value(SECRET_SETTING))
    except ConvbridgeError as exc:
        logger.error("Event Grid delivery cannot be authenticated: %s", exc)
        return _json(503, {"error": "temporarily unavailable"})
    if not _authenticated(query, expected):
        logger.warning("Event Grid delivery refused: endpoint code missing or wrong")
        return _json(401, {"error": "unauthenticated"})
    if method == "OPTIONS":
        return _abuse_protection(headers)
    if method != "POST":
        return _json(405, {"error": "method not allowed"}, {"Allow": "POST, OPTIONS"})
    if len(body) > current.settings.max_callback_bytes:
        logger.warning("Event Grid delivery of %d bytes refused: over the limit", len(body))
        return _json(413, {"error": "payload too large"})
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        logger.warning("Event Grid delivery refused: the body is not JSON")
        return _json(400, {"error": "malformed JSON"})
    code = subscription_validation_code(payload)
    if code is not None:
        logger.info("answering an Event Grid subscription validation")
        return _json(200, {"validationResponse": code})
    parsed = parse_event_grid(payload)
    for reason in parsed.ignored:
        logger.info("event ignored: %s", reason)
    # aeg-delivery-count counts earlier deliveries: 0 on the first
    earlier = receive_count(headers.get("aeg-delivery-count"), unreadable=0)
    final = earlier + 1 >= MAX_RECEIVES
    current.claims.register_lambda_context(context)
    with deadline_from(getattr(context, "get_remaining_time_in_millis", None)):
        submissions = submit_all(current, parsed.objects, final_attempt=final)
    again = any(s.status in {"retry", "error"} for s in submissions)
    return _json(503 if again else 200, summarize(submissions))


def _endpoint_code(secrets: SecretStore, secret_name: str | None) -> str:
    if not secret_name:
        raise ConfigError(f"CONVBRIDGE_{SECRET_SETTING} is not set; it names the secret that "
                          "authenticates Event Grid deliveries")
    secret = secrets.get(secret_name)
    code = secret.optional("code") or secret.field("value")
    if len(code) < MIN_CODE_LENGTH:
        raise ConfigError(f"the Event Grid endpoint code in {secret_name} must be at least "
                          f"{MIN_CODE_LENGTH} characters")
    return code


def _authenticated(query: str, expected: str) -> bool:
    given = parse_qs(query, keep_blank_values=True).get(CODE_PARAMETER, [])
    # exactly one code: a repeated parameter might be read differently by a proxy in front
    return len(given) == 1 and hmac.compare_digest(comparable_bytes(given[0]), expected.encode())


def _abuse_protection(headers: Mapping[str, str]) -> Answer:
    """CloudEvents webhook validation: Event Grid asks with ``WebHook-Request-Origin`` and
    delivers only once the answer allows that origin."""
    origin = headers.get("webhook-request-origin", "").strip()
    if not origin:
        return _json(400, {"error": "OPTIONS without WebHook-Request-Origin"})
    if not _HOSTNAME.fullmatch(origin):
        # echoed into a response header: anything but a hostname (a CRLF above all) is refused
        logger.warning("CloudEvents abuse-protection request refused: the origin is not a "
                       "hostname")
        return _json(400, {"error": "WebHook-Request-Origin is not a hostname"})
    logger.info("answering a CloudEvents abuse-protection request from %s", origin)
    return 200, {"WebHook-Allowed-Origin": origin, "WebHook-Allowed-Rate": "*",
                 "Allow": "POST, OPTIONS"}, ""


def _json(status: int, document: Mapping[str, Any],
          headers: Mapping[str, str] | None = None) -> Answer:
    return status, {**JSON_HEADERS, **(headers or {})}, json.dumps(document)
