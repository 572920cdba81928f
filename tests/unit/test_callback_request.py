"""A provider callback as one value: built once from the HTTP event, carried whole through the
completion queue, and read by the adapters the same way on either side."""

from __future__ import annotations

import base64
import json

import pytest

from convbridge.errors import CallbackError, CallbackSignatureError
from convbridge.model import CallbackRequest
from convbridge.runtime import callback_request
from convbridge.webhook import queue_message, queued_callback


def http_event(**changes: object) -> dict[str, object]:
    event: dict[str, object] = {
        "requestContext": {"http": {"method": "GET", "path": "/callbacks/onlineconvert"}},
        "headers": {"Content-Type": "application/json", "X-Forwarded-For": "203.0.113.9"},
        "rawQueryString": "token=abc.def&id=42",
        "body": "eyJpZCI6IDQyfQ==",
        "isBase64Encoded": True,
    }
    event.update(changes)
    return event


def test_the_request_holds_the_exact_body_bytes_lower_cased_headers_query_and_method() -> None:
    request = callback_request(http_event())
    assert request.body == b'{"id": 42}'
    assert dict(request.headers) == {"content-type": "application/json",
                                     "x-forwarded-for": "203.0.113.9"}
    assert request.header("Content-Type") == "application/json"
    assert (request.method, request.query) == ("GET", "token=abc.def&id=42")
    assert request.parameters() == {"token": "abc.def", "id": "42"}


def test_a_body_marked_base64_that_is_not_is_refused_as_a_bad_request() -> None:
    with pytest.raises(CallbackError) as refused:
        callback_request(http_event(body="*not base64*"))
    assert refused.value.status == 400


def test_a_header_can_never_stand_in_for_the_callback_urls_token() -> None:
    request = callback_request(http_event(rawQueryString="", headers={
        ":query": "token=forged", "token": "forged"}))
    assert request.parameters() == {}


def test_a_repeated_query_parameter_is_refused() -> None:
    with pytest.raises(CallbackSignatureError):
        CallbackRequest(b"", query="token=a&token=b").parameters()


def test_header_names_are_lower_cased_whoever_builds_the_request() -> None:
    request = CallbackRequest(b"{}", {"CloudConvert-Signature": "ab12"})
    assert dict(request.headers) == {"cloudconvert-signature": "ab12"}
    assert request.header("CLOUDCONVERT-SIGNATURE") == "ab12"
    with pytest.raises(TypeError):
        request.headers["cloudconvert-signature"] = "forged"  # type: ignore[index]


def test_a_queued_callback_reads_back_as_the_request_that_arrived() -> None:
    arrived = CallbackRequest(b"\x00\xff raw bytes", {"FreeConvert-Signature": "ab12"},
                              query="token=abc&step=finished", method="GET")
    queued = queued_callback(queue_message("freeconvert", arrived))
    assert queued.provider == "freeconvert"
    assert queued.request == arrived


def test_a_queue_message_of_the_wrong_shape_is_refused() -> None:
    message = {"provider": "cloudconvert", "headers": {}, "body": base64.b64encode(b"{}").decode()}
    for wrong in [{"query": 5}, {"method": []}]:
        with pytest.raises(CallbackError):
            queued_callback(json.dumps(message | wrong))


def test_a_callback_queued_by_an_earlier_release_keeps_its_query() -> None:
    """Earlier releases queued the query string as a ``:query`` header; such a message still
    in the queue across an upgrade keeps its per-job token."""
    message = {"provider": "onlineconvert", "headers": {":query": "token=abc.def",
                                                        "Content-Type": "application/json"},
               "body": base64.b64encode(b"{}").decode()}
    queued = queued_callback(json.dumps(message))
    assert queued.request.parameters() == {"token": "abc.def"}
    assert dict(queued.request.headers) == {"content-type": "application/json"}
