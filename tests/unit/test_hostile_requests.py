"""Requests no genuine caller sends, each answered with its own well-formed refusal by the real
handlers (``functions/*/app.py``): the webhook over moto and the provider sandbox, the Event
Grid and Pub/Sub triggers over stub bridges (their secrets and tokens would need cloud
accounts), the S3 trigger and the completion queue over moto. Nothing is written and the
provider hears nothing."""

from __future__ import annotations

import json
import logging
from typing import Any

import httpx
import pytest

from convbridge.context import JobContext, sign_context, verify_context
from convbridge.errors import ContextError
from convbridge.events.event_grid import MalformedEvent, split_blob_url
from devstack.lambda_local import load_function
from devstack.stack import DevStack
from tests.unit.hostile import (
    EVENT_GRID_CODE,
    ISSUER,
    SIGNATURE_HEADERS,
    Submitted,
    forged_token,
    http_event,
    invoke,
    json_answer,
    sign,
    sqs_event,
    stack,
    triggers,
    webhook_handler,
)

__all__ = ["stack", "triggers"]  # fixtures

DEEP = b"[" * 100_000 + b"]" * 100_000


def callback(provider: str, *, body: bytes = b"{}", headers: dict[str, str] | None = None,
             query: str = "", method: str = "POST", force_base64: bool = False) -> dict[str, Any]:
    target = f"/callbacks/{provider}" + (f"?{query}" if query else "")
    return invoke(webhook_handler(), http_event(method, target, headers or {}, body,
                                                force_base64=force_base64))


def token_for(stack: DevStack, provider: str) -> str:
    context = JobContext.new(rule=f"to-pdf-{provider.replace('_', '-')}", storage="s3",
                             location=stack.bucket, key=f"in-{provider}/a.png", version="v1",
                             output_key=f"out-{provider}/a.png.pdf", route="relay")
    return sign_context(context, stack.context_key.encode())


def untouched(stack: DevStack, requests_before: int) -> None:
    assert stack.objects() == {}
    assert len(stack.sandbox.requests()) == requests_before


# ------------------------------------------------------------------------------ webhook


@pytest.mark.parametrize("provider", sorted(SIGNATURE_HEADERS))
@pytest.mark.parametrize("signature", ["é" * 64, "\u2603", "0" * 63 + "\U0001f600"])
def test_a_non_ascii_signature_simply_does_not_match(stack: DevStack, provider: str,
                                                     signature: str) -> None:
    before = len(stack.sandbox.requests())
    status, body = json_answer(callback(provider, headers={SIGNATURE_HEADERS[provider]:
                                                           signature}))
    assert (status, body) == (401, {"error": "CallbackSignatureError"})
    untouched(stack, before)


@pytest.mark.parametrize("api_gateway", [False, True])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_function_url_and_api_gateway_requests_reach_the_callback_route(
        stack: DevStack, api_gateway: bool, method: str) -> None:
    event = http_event(method, "/callbacks/cloudconvert", {}, b"{}", api_gateway=api_gateway)
    status, body = json_answer(invoke(webhook_handler(), event))
    assert (status, body) == (401, {"error": "CallbackSignatureError"})


@pytest.mark.parametrize("event", [{}, {"Records": [{"eventSource": "aws:sqs"}]},
                                   {"requestContext": "x"}, {"requestContext": {"http": 5}}])
def test_an_event_that_is_neither_http_nor_sqs_is_refused_400(event: dict[str, Any]) -> None:
    status, body = json_answer(invoke(webhook_handler(), event))
    assert (status, body) == (400, {"error": "not an HTTP request"})


@pytest.mark.parametrize("token", ["é.é", "a" * 10 + "." + "\u00ff" * 64, ".", "x.",
                                   "\U0001f600" * 3 + "." + "0" * 64])
def test_a_non_ascii_or_malformed_url_token_is_refused_401(stack: DevStack, token: str) -> None:
    before = len(stack.sandbox.requests())
    status, body = json_answer(callback("onlineconvert", query=httpx.QueryParams(
        {"token": token}).__str__(), body=b'{"id": "abc"}'))
    assert (status, body) == (401, {"error": "ContextError"})
    untouched(stack, before)


@pytest.mark.parametrize("payload", [
    b"[1, 2]", b'"text"', b"null", b"{}", b'{"v": 1}', b"\xff\xfe not utf-8",
    b'{"v": 1, "rule": 5, "storage": "s3", "location": "b", "key": "k", "version": null, '
    b'"output_key": "o", "route": "relay", "issued_at": "yesterday", "nonce": "n"}',
    b'{"v": 1, "rule": "r", "storage": "s3", "location": "b", "key": "k", "version": null, '
    b'"output_key": "o", "route": "relay", "issued_at": 1e999, "nonce": "n", "extra": 1}',
    b'{"v": 1, "rule": "r", "storage": "s3", "location": "b", "key": "k", "version": null, '
    b'"output_key": "o", "route": "relay", "issued_at": true, "nonce": "n"}',
    b"[" * 50_000 + b"]" * 50_000,
])
def test_a_token_whose_hmac_verifies_but_whose_payload_is_malformed_is_refused_401(
        stack: DevStack, payload: bytes) -> None:
    """Signed with our own key (a bug of ours, or a leaked key): still a refusal, not a crash."""
    token = forged_token(stack.context_key, payload)
    body = json.dumps({"event": "job.finished", "job": {"id": "j", "tag": token}}).encode()
    status, answer = json_answer(callback("cloudconvert", body=body, headers={
        "CloudConvert-Signature": sign(stack.signing_secret, body)}))
    assert (status, answer) == (401, {"error": "ContextError"})
    assert stack.objects() == {}


@pytest.mark.parametrize("provider", sorted(SIGNATURE_HEADERS))
def test_a_deeply_nested_signed_body_is_refused_400(stack: DevStack, provider: str) -> None:
    status, body = json_answer(callback(provider, body=DEEP, headers={
        SIGNATURE_HEADERS[provider]: sign(stack.signing_secret, DEEP)}))
    assert (status, body) == (400, {"error": "CallbackError"})
    assert stack.objects() == {}


def test_a_deeply_nested_body_behind_a_forged_url_token_is_refused_before_it_is_read(
        stack: DevStack) -> None:
    status, body = json_answer(callback("onlineconvert", body=DEEP, query="token=forged.abc"))
    assert (status, body) == (401, {"error": "ContextError"})


def test_a_deeply_nested_body_behind_a_genuine_url_token_is_refused_400(
        stack: DevStack) -> None:
    before = len(stack.sandbox.requests())
    query = str(httpx.QueryParams({"token": token_for(stack, "onlineconvert")}))
    status, body = json_answer(callback("onlineconvert", body=DEEP, query=query))
    assert (status, body) == (400, {"error": "CallbackError"})
    untouched(stack, before)


@pytest.mark.parametrize("provider", ["onlineconvert", "cloudconvert_v1"])
def test_unsigned_dialects_check_the_url_token_before_reading_the_body(
        stack: DevStack, provider: str) -> None:
    """A forged token is the answer, whatever the body: its parser is never reached."""
    before = len(stack.sandbox.requests())
    status, body = json_answer(callback(provider, body=b"not json at all",
                                        query="token=forged.0000&id=abc&step=finished&url=x"))
    assert (status, body) == (401, {"error": "ContextError"})
    untouched(stack, before)


@pytest.mark.parametrize("provider", ["cloudconvert", "onlineconvert"])
def test_invalid_base64_of_a_base64_encoded_body_is_refused_400(provider: str,
                                                                stack: DevStack) -> None:
    event = http_event("POST", f"/callbacks/{provider}?token=a.b", {}, b"{}")
    event.update(body="not*base64!", isBase64Encoded=True)
    status, body = json_answer(invoke(webhook_handler(), event))
    assert (status, body) == (400, {"error": "CallbackError"})


@pytest.mark.parametrize("body", [b"[]", b'"job"', b'{"event": "job.finished", "job": 5}',
                                  b'{"event": "job.finished", "job": {"tasks": 5}}',
                                  b'{"event": "job.finished", "job": {"tasks": [5]}}',
                                  b'{"event": "job.finished", "job": {"tag": 5}}',
                                  b'{"event": "job.finished", "job": {"tasks": [{"status": '
                                  b'"finished", "operation": "export/url", "result": 5}]}}',
                                  b'{"event": ["job.finished"], "job": {}}'])
def test_a_signed_cloudconvert_body_of_the_wrong_shape_is_refused_400(stack: DevStack,
                                                                      body: bytes) -> None:
    status, answer = json_answer(callback("cloudconvert", body=body, headers={
        "CloudConvert-Signature": sign(stack.signing_secret, body)}))
    assert status in {400, 401} and answer["error"] in {"CallbackError", "ContextError"}
    assert stack.objects() == {}


def test_an_unexpected_exception_becomes_a_logged_500(stack: DevStack,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A failure nobody foresaw (here the adapter breaking while it reads the callback; the
    outcome is confirmed with the provider from the completion queue) is logged with its
    traceback and answered, never raised."""
    from convbridge.providers.onlineconvert import OnlineConvert

    def broken(self: Any, request: Any) -> None:
        raise httpx.LocalProtocolError("the client broke")

    monkeypatch.setattr(OnlineConvert, "accept_callback", broken)
    query = str(httpx.QueryParams({"token": token_for(stack, "onlineconvert")}))
    with caplog.at_level(logging.ERROR, logger="convbridge"):
        status, body = json_answer(callback("onlineconvert", query=query, body=json.dumps(
            {"id": "abc", "status": {"code": "completed"}}).encode()))
    assert (status, body) == (500, {"error": "internal error"})
    assert any(r.exc_info for r in caplog.records)


def test_a_garbage_completion_queue_message_is_dropped_not_retried(
        stack: DevStack, caplog: pytest.LogCaptureFixture) -> None:
    messages = ["not json", "[1]", json.dumps({"provider": "cloudconvert"}),
                json.dumps({"provider": 5, "headers": {}, "body": ""}),
                json.dumps({"provider": "cloudconvert", "headers": [], "body": ""}),
                json.dumps({"provider": "cloudconvert", "headers": {}, "body": "*not base64*"}),
                "[" * 100_000]
    with caplog.at_level(logging.WARNING, logger="convbridge"):
        answer = invoke(webhook_handler(), sqs_event(*messages))
    assert answer == {"batchItemFailures": []}
    assert sum("queued callback dropped" in r.getMessage() for r in caplog.records) == len(
        messages)
    assert stack.objects() == {}


# ----------------------------------------------------------------------- Event Grid trigger


def event_grid_request(method: str = "POST", headers: dict[str, str] | None = None,
                       body: bytes = b"[]", event_changes: dict[str, Any] | None = None,
                       ) -> tuple[int, Any, dict[str, Any]]:
    event = http_event(method, f"/?code={EVENT_GRID_CODE}", headers or {}, body)
    event.update(event_changes or {})
    answer = invoke(load_function("azure_trigger").handler, event)
    return answer["statusCode"], json.loads(answer["body"]) if answer["body"] else None, answer


@pytest.mark.parametrize("count", ["\u00b2", "\u0663", "9" * 5000, "-1", " 1"])
def test_a_non_digit_delivery_count_is_read_as_a_first_delivery(triggers: Submitted,
                                                                count: str) -> None:
    status, body, _ = event_grid_request(headers={"aeg-delivery-count": count})
    assert status == 200 and body["counts"] == {}


@pytest.mark.parametrize("origin", ["eventgrid.azure.net\r\nSet-Cookie: a=b", "a\nb",
                                    "http://eventgrid.azure.net", "*", "é.example",
                                    "a" * 300, "-bad.example", "bad..example"])
def test_only_a_hostname_is_echoed_as_the_allowed_origin(triggers: Submitted,
                                                         origin: str) -> None:
    status, body, answer = event_grid_request("OPTIONS", {"WebHook-Request-Origin": origin})
    assert status == 400 and body == {"error": "WebHook-Request-Origin is not a hostname"}
    assert "WebHook-Allowed-Origin" not in answer["headers"]


def test_a_hostname_origin_is_still_allowed(triggers: Submitted) -> None:
    status, _, answer = event_grid_request("OPTIONS",
                                           {"WebHook-Request-Origin": "eventgrid.azure.net"})
    assert status == 200 and answer["headers"]["WebHook-Allowed-Origin"] == "eventgrid.azure.net"


def test_event_grid_refuses_invalid_base64_400(triggers: Submitted) -> None:
    status, body, _ = event_grid_request(event_changes={"isBase64Encoded": True,
                                                        "body": "%%%not base64"})
    assert (status, body) == (400, {"error": "the body is not valid base64"})


def test_a_blob_url_with_a_newline_after_the_account_is_malformed() -> None:
    for url in ("https://abcd\n.blob.core.windows.net/container/blob",
                "https://abcd.blob.core.windows.net/container\n/blob",
                "http://127.0.0.1:10000\n/devstoreaccount1/container/blob"):
        with pytest.raises(MalformedEvent):
            split_blob_url(url)


# ------------------------------------------------------------------------- Pub/Sub trigger


def pubsub_request(headers: dict[str, str], body: bytes = b"{}",
                   event_changes: dict[str, Any] | None = None) -> tuple[int, Any]:
    event = http_event("POST", "/", headers, body)
    event.update(event_changes or {})
    return json_answer(invoke(load_function("gcs_trigger").handler, event))


def test_pubsub_refuses_invalid_base64_400(triggers: Submitted) -> None:
    status, body = pubsub_request({"authorization": f"Bearer {ISSUER.token()}"},
                                  event_changes={"isBase64Encoded": True, "body": "%%%not base64"})
    assert (status, body) == (400, {"error": "CallbackError"})


@pytest.mark.parametrize("token", ["é.é.é", "\u2603", "a.b", "...", "eyJ9.eyJ9.AA",
                                   "e30.e30.", "W10.e30.", "eyJhbGciOjV9.e30.AA"])
def test_a_malformed_push_token_is_refused_401(triggers: Submitted, token: str) -> None:
    status, body = pubsub_request({"authorization": f"Bearer {token}"})
    assert (status, body) == (401, {"error": "CallbackSignatureError"})
    assert triggers.objects == []


# ---------------------------------------------------------------------------- S3 trigger


@pytest.mark.parametrize("event", [[], "text", 5, None, {"Records": "x"}, {"Records": [5]}])
def test_a_direct_s3_event_of_any_shape_gets_a_summary(stack: DevStack, event: Any) -> None:
    answer = stack.invoke_trigger(event)
    assert answer["counts"] == {}


def test_an_sqs_receive_count_that_is_not_a_number_does_not_fail_the_record(
        stack: DevStack) -> None:
    answer = stack.invoke_trigger(sqs_event("not json", receive_count="many"))
    assert answer == {"batchItemFailures": []}


def test_verify_context_refuses_non_string_tokens(stack: DevStack) -> None:
    for token in (5, ["a.b"], b"a.b"):
        with pytest.raises(ContextError):
            verify_context(token, b"k" * 32, max_age_seconds=60)  # type: ignore[arg-type]
