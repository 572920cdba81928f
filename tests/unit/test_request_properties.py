"""Every request gets an answer (DESIGN.md, Invariants): whatever bytes, headers and query
strings reach a handler, it answers with a well-formed HTTP answer (an int status 200-599 and
a JSON body) or a well-formed batch answer, never an exception; and nothing is written, queued
or sent to the provider unless the request was genuine.

Example counts, chosen so the module runs in well under a minute:
* webhook, each of the four ``/callbacks/<provider>`` routes, GET and POST, Function URL and
  API Gateway v2 events, body base64 or not: 150 examples per route (real bridge over moto)
* Event Grid trigger (Function URL): 200; Pub/Sub trigger (Function URL): 200 (stub bridges)
* S3 trigger, direct events: 100; S3 trigger, SQS records: 100 (real bridge over moto)
* webhook completion queue, SQS records: 100 (real bridge over moto)
"""

from __future__ import annotations

import base64
import functools
import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.lambda_local import LocalContext, load_function
from devstack.stack import DevStack
from tests.unit.hostile import (
    EVENT_GRID_CODE,
    ISSUER,
    PROVIDERS,
    SIGNATURE_HEADERS,
    Submitted,
    forged_token,
    http_event,
    sign,
    sqs_event,
    stack,
    triggers,
)

__all__ = ["stack", "triggers"]  # fixtures

ON_A_SHARED_FIXTURE = settings(deadline=None, database=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CRLF = re.compile(r"[\r\n]")

# ------------------------------------------------------------------------ what arrives

#: text as hostile callers send it: control characters, CR/LF, non-ASCII, now and then huge
hostile_text = st.one_of(
    st.text(max_size=80),
    st.text(alphabet=st.sampled_from("\r\n\t\x00 é\u2603\U0001f600\ud7ff=&%.;,:\"'"),
            max_size=40),
    st.sampled_from(["", " ", "\r\n", "a\r\nSet-Cookie: x=y", "é" * 64, "0" * 64,
                     "9" * 5000, "\u00b2", "Bearer ", "x" * 20_000]),
)
#: bodies: raw bytes, JSON-ish documents, absurd nesting, huge
json_documents = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | hostile_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=12,
)
bodies = st.one_of(
    st.binary(max_size=512),
    json_documents.map(lambda doc: json.dumps(doc).encode()),
    st.sampled_from([b"", b"{}", b"[]", b"null", b"[" * 100_000, b"{\"a\":" * 50_000,
                     b"\xff\xfe\x00", b"x" * 300_000]),
)
HEADER_NAMES = ["CloudConvert-Signature", "cloudconvert-signature", "FreeConvert-Signature",
                "Authorization", "authorization", "Content-Type", "ce-specversion", "ce-type",
                "aeg-delivery-count", "WebHook-Request-Origin", ":query", "Host"]
header_maps = st.dictionaries(st.sampled_from(HEADER_NAMES) | hostile_text, hostile_text,
                              max_size=6)
query_strings = st.one_of(
    hostile_text,
    st.lists(st.tuples(st.sampled_from(["token", "code", "id", "step", "url"]) | hostile_text,
                       hostile_text), max_size=4).map(
        lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)),
)


def well_formed(answer: dict[str, Any], *, empty_body_allowed: bool = False) -> Any:
    """The answer's parsed body, after checking it is a well-formed HTTP answer."""
    status = answer["statusCode"]
    assert isinstance(status, int) and 200 <= status <= 599, answer
    for name, value in (answer.get("headers") or {}).items():
        assert not CRLF.search(f"{name}{value}"), answer
    if empty_body_allowed and answer["body"] == "":
        return None
    return json.loads(answer["body"])


def with_body(event: dict[str, Any], body: bytes, mode: str) -> dict[str, Any]:
    """``mode``: as the platform sends it, base64 always, or base64 that is not base64."""
    if mode == "base64":
        event.update(body=base64.b64encode(body).decode(), isBase64Encoded=True)
    elif mode == "broken-base64":
        event.update(body=body.decode("latin-1") + "*", isBase64Encoded=True)
    return event


body_modes = st.sampled_from(["as-sent", "base64", "broken-base64"])

# ------------------------------------------------------------------------------ webhook


@pytest.fixture(scope="module")
def webhook() -> Any:
    return load_function("webhook").handler


def queue_depth(stack: DevStack) -> int:
    import boto3

    sqs = boto3.client("sqs", region_name="us-east-1")
    url = sqs.get_queue_url(QueueName="convbridge-completion")["QueueUrl"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return sum(int(attributes[name]) for name in ("ApproximateNumberOfMessages",
                                                  "ApproximateNumberOfMessagesNotVisible"))


@pytest.mark.parametrize("provider", PROVIDERS)
def test_every_callback_request_is_answered_and_writes_nothing(stack: DevStack, webhook: Any,
                                                               provider: str) -> None:
    """150 examples per provider route. Signed dialects sometimes get the genuine signature
    of a garbage body; unsigned ones sometimes a genuine-looking token that fails our HMAC."""
    requests_before = len(stack.sandbox.requests())

    @settings(ON_A_SHARED_FIXTURE, max_examples=150)
    @given(method=st.sampled_from(["POST", "GET", "PUT", "OPTIONS"]), headers=header_maps,
           query=query_strings, body=bodies, mode=body_modes, api_gateway=st.booleans(),
           signed=st.booleans(), forged=st.booleans())
    def check(method: str, headers: dict[str, str], query: str, body: bytes, mode: str,
              api_gateway: bool, signed: bool, forged: bool) -> None:
        headers = dict(headers)
        if signed and provider in SIGNATURE_HEADERS:
            headers[SIGNATURE_HEADERS[provider]] = sign(stack.signing_secret, body)
        if forged:  # a well-formed token signed with a key that is not ours
            query = f"token={forged_token('not-our-key' * 4, body[:64])}&{query}"
        event = with_body(http_event(method, f"/callbacks/{provider}", headers, b"",
                                     api_gateway=api_gateway), body, mode)
        event["rawQueryString"] = query
        answer = webhook(event, LocalContext())
        document = well_formed(answer)
        if method in {"GET", "POST"}:  # the route answered, not the router
            assert answer["statusCode"] != 404, answer
        if answer["statusCode"] < 300:
            assert document == {"status": "ignored"}, document

    check()
    assert stack.objects() == {}
    assert queue_depth(stack) == 0
    assert len(stack.sandbox.requests()) == requests_before


@settings(ON_A_SHARED_FIXTURE, max_examples=100)
@given(messages=st.lists(st.one_of(
    hostile_text,
    json_documents.map(json.dumps),
    st.fixed_dictionaries({"provider": st.sampled_from(PROVIDERS) | hostile_text,
                           "headers": st.dictionaries(hostile_text, hostile_text, max_size=3),
                           "body": st.binary(max_size=200).map(
                               lambda b: base64.b64encode(b).decode()) | hostile_text,
                           }).map(json.dumps)), min_size=1, max_size=4))
def test_every_completion_queue_batch_is_answered_and_writes_nothing(
        stack: DevStack, webhook: Any, messages: list[str]) -> None:
    """100 examples of batches of garbage queue messages: each is dropped with a log line
    (none can succeed later), the batch answer is well formed, nothing is written."""
    answer = webhook(sqs_event(*messages), LocalContext())
    assert answer == {"batchItemFailures": []}
    assert stack.objects() == {}


# ---------------------------------------------------------------------------- S3 trigger

s3_records = st.fixed_dictionaries({
    "eventSource": st.sampled_from(["aws:s3", "aws:sqs", "aws:sns"]) | hostile_text,
    "eventName": st.sampled_from(["ObjectCreated:Put", "ObjectRemoved:Delete"]) | hostile_text,
    "s3": st.fixed_dictionaries({
        "bucket": st.fixed_dictionaries({"name": st.just("convbridge-demo") | hostile_text}),
        "object": st.fixed_dictionaries({
            "key": st.sampled_from([f"in-{p}/a.png" for p in PROVIDERS]) | hostile_text,
            "size": st.integers(-1, 10**12) | hostile_text})}),
}) | json_documents
s3_events = st.one_of(json_documents, st.fixed_dictionaries(
    {"Records": st.lists(s3_records, max_size=3) | json_documents}))


@settings(ON_A_SHARED_FIXTURE, max_examples=100)
@given(event=s3_events)
def test_every_direct_s3_event_gets_a_summary(stack: DevStack, event: Any) -> None:
    """100 examples: S3-notification-like documents with hostile fields, and anything else;
    none names an object that exists, so nothing is written and nothing reaches the provider."""
    requests_before = len(stack.sandbox.requests())
    answer = stack.invoke_trigger(event)
    if "batchItemFailures" not in answer:
        assert set(answer) == {"counts", "objects"}
        assert not {"submitted", "error"} & set(answer["counts"]), answer
    assert stack.objects() == {}
    assert len(stack.sandbox.requests()) == requests_before


@settings(ON_A_SHARED_FIXTURE, max_examples=100)
@given(bodies_=st.lists(hostile_text | json_documents.map(json.dumps) | s3_events.map(
    json.dumps), min_size=1, max_size=4), count=hostile_text)
def test_every_s3_trigger_batch_gets_a_batch_answer(stack: DevStack, bodies_: list[str],
                                                    count: str) -> None:
    """100 examples of SQS batches with garbage bodies and receive counts: one record's
    trouble is that record's alone, and garbage is acknowledged, not redelivered."""
    answer = stack.invoke_trigger(sqs_event(*bodies_, receive_count=count))
    assert answer == {"batchItemFailures": []}
    assert stack.objects() == {}


# ----------------------------------------------------------------- Event Grid and Pub/Sub


@settings(ON_A_SHARED_FIXTURE, max_examples=200)
@given(method=st.sampled_from(["POST", "OPTIONS", "GET", "DELETE"]), headers=header_maps,
       query=query_strings, authenticated=st.booleans(), body=bodies, mode=body_modes)
def test_every_event_grid_request_is_answered(triggers: Submitted, method: str,
                                              headers: dict[str, str], query: str,
                                              authenticated: bool, body: bytes,
                                              mode: str) -> None:
    """200 examples; objects reach submit_all only from a request with the endpoint code."""
    before = len(triggers.objects)
    if authenticated:
        query = f"code={EVENT_GRID_CODE}"
    event = with_body(http_event(method, "/", headers, b""), body, mode)
    event["rawQueryString"] = query
    answer = load_azure_trigger()(event, LocalContext())
    well_formed(answer, empty_body_allowed=method == "OPTIONS")
    if not authenticated:
        assert answer["statusCode"] in {400, 401} and len(triggers.objects) == before


@settings(ON_A_SHARED_FIXTURE, max_examples=200)
@given(headers=header_maps, genuine=st.booleans(), body=bodies, mode=body_modes,
       method=st.sampled_from(["POST", "GET"]))
def test_every_pubsub_push_request_is_answered(triggers: Submitted, headers: dict[str, str],
                                               genuine: bool, body: bytes, mode: str,
                                               method: str) -> None:
    """200 examples; objects reach submit_all only from a request with a genuine token."""
    before = len(triggers.objects)
    headers = {k: v for k, v in headers.items() if k.lower() != "authorization"} | (
        {"authorization": f"Bearer {TOKEN}"} if genuine else
        {"authorization": headers.get("Authorization", headers.get("authorization", ""))})
    event = with_body(http_event(method, "/", headers, b""), body, mode)
    answer = load_gcs_trigger()(event, LocalContext())
    well_formed(answer)
    if not genuine:
        assert answer["statusCode"] in {400, 401, 405, 413}
        assert len(triggers.objects) == before


TOKEN = ISSUER.token(lifetime=3600)


@functools.cache
def load_azure_trigger() -> Any:
    return load_function("azure_trigger").handler


@functools.cache
def load_gcs_trigger() -> Any:
    return load_function("gcs_trigger").handler
