"""Shared by the hostile-request tests: a bridge over moto and the sandbox with one rule per
provider dialect, Lambda event builders for every shape a handler receives, and stub bridges
for the triggers whose real secrets and tokens would need cloud accounts."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from convbridge.triggers import event_grid, pubsub
from devstack.harness.gcs import PUSH_AUDIENCE, PUSH_SERVICE_ACCOUNT, LocalOidcIssuer
from devstack.lambda_local import LocalContext, function_url_event, load_function
from devstack.stack import DevStack

PROVIDERS = ("cloudconvert", "freeconvert", "onlineconvert", "cloudconvert_v1")
SIGNATURE_HEADERS = {"cloudconvert": "CloudConvert-Signature",
                     "freeconvert": "FreeConvert-Signature"}
#: one rule per dialect, each under its own prefixes, so every callback route is live
RULES = "version: 1\nrules:\n" + "".join(f"""\
  - name: to-pdf-{provider.replace('_', '-')}
    match: {{storage: s3, location: convbridge-demo, prefix: in-{provider}/}}
    convert: {{to: pdf}}
    provider: {provider}
    outputs: out-{provider}/
    results: results-{provider}/
    failures: failures-{provider}/
""" for provider in PROVIDERS)
EVENT_GRID_CODE = "c" * 40
ISSUER = LocalOidcIssuer()


@pytest.fixture(scope="module")
def stack() -> Iterator[DevStack]:
    with DevStack(rules_text=RULES) as running:
        yield running


def webhook_handler() -> Any:
    return load_function("webhook").handler


def http_event(method: str, target: str, headers: dict[str, str], body: bytes, *,
               force_base64: bool = False, api_gateway: bool = False) -> dict[str, Any]:
    """A Function URL (payload 2.0) event, or the API Gateway HTTP API event of the same
    request, which differs only in its route key and request context."""
    event = function_url_event(method, target, headers, body, force_base64=force_base64)
    if api_gateway:
        route = f"{method} /callbacks/{{provider}}"
        event["routeKey"] = route
        event["requestContext"].update(routeKey=route, apiId="hostile", stage="$default",
                                       domainName="hostile.execute-api.local")
        event["pathParameters"] = {"provider": event["rawPath"].rsplit("/", 1)[-1]}
    return event


def sqs_event(*bodies: str, receive_count: str = "1") -> dict[str, Any]:
    return {"Records": [{
        "messageId": f"m-{index}", "receiptHandle": f"r-{index}", "body": body,
        "attributes": {"ApproximateReceiveCount": receive_count,
                       "SentTimestamp": "1700000000000"},
        "messageAttributes": {}, "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q",
        "awsRegion": "us-east-1"} for index, body in enumerate(bodies)]}


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def forged_token(key: str, payload: bytes) -> str:
    """A context token whose HMAC verifies but whose payload is whatever the test wants: what
    a holder of the context key (or a bug of ours) could produce."""
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    return f"{body}.{hmac.new(key.encode(), body.encode(), hashlib.sha256).hexdigest()}"


def invoke(handler: Any, event: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = handler(event, LocalContext())
    return answer


def json_answer(answer: dict[str, Any]) -> tuple[int, Any]:
    """(status, parsed body) of an HTTP answer; fails unless it is well formed."""
    status = answer["statusCode"]
    assert isinstance(status, int) and 200 <= status <= 599, answer
    return status, json.loads(answer["body"])


# ------------------------------------------------------------------ stub trigger bridges


class _Secret:
    def optional(self, key: str) -> str | None:
        return EVENT_GRID_CODE if key == "code" else None

    def field(self, key: str) -> str:
        raise KeyError(key)


class _Secrets:
    def get(self, name: str) -> _Secret:
        return _Secret()


class _Settings:
    max_callback_bytes = 64 * 1024

    def value(self, name: str, default: str | None = None) -> str | None:
        return "convbridge/event-grid" if name == "EVENT_GRID_SECRET" else default


@dataclass
class _Claims:
    registered: list[Any] = field(default_factory=list)

    def register_lambda_context(self, context: Any) -> None:
        self.registered.append(context)


@dataclass
class StubBridge:
    """What the Event Grid and Pub/Sub triggers read from a bridge before they submit."""

    secrets: _Secrets = field(default_factory=_Secrets)
    settings: _Settings = field(default_factory=_Settings)
    claims: _Claims = field(default_factory=_Claims)


@dataclass
class Submitted:
    """Every object a trigger handed to submit_all."""

    objects: list[Any] = field(default_factory=list)


@pytest.fixture
def triggers(monkeypatch: pytest.MonkeyPatch) -> Submitted:
    """The Event Grid and Pub/Sub triggers over a stub bridge: Event Grid's endpoint code is
    EVENT_GRID_CODE, Pub/Sub trusts tokens of ISSUER; submit_all records what it was given."""
    stub = StubBridge()
    submitted = Submitted()

    def submit_all(bridge: Any, refs: Any, *, final_attempt: bool = True) -> list[Any]:
        submitted.objects.extend(refs)
        return []

    authenticator = pubsub.PushAuthenticator(audience=PUSH_AUDIENCE,
                                             service_account=PUSH_SERVICE_ACCOUNT,
                                             certificates=lambda key_id: ISSUER.certs())
    for module in (event_grid, pubsub):
        monkeypatch.setattr(module, "bridge", lambda: stub)
        monkeypatch.setattr(module, "submit_all", submit_all)
    monkeypatch.setattr(pubsub, "authenticator_for", lambda current: authenticator)
    return submitted
