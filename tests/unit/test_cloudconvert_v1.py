"""CloudConvert v1 adapter: the process document, create-then-start, the GET callback's token,
and the process read that decides what happened."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from convbridge.errors import (
    CallbackError,
    CallbackSignatureError,
    ProviderError,
    ProviderUnavailable,
    StaleWrite,
)
from convbridge.model import (
    CallbackRequest,
    ConversionSpec,
    Grant,
    JobSpec,
    ObjectRef,
    OutputTarget,
)
from convbridge.providers.cloudconvert_v1 import CloudConvertV1

FIXTURES = Path(__file__).parent.parent / "fixtures" / "cloudconvert_v1"
NOW = datetime(2026, 11, 23, tzinfo=UTC)
TOKEN = "CONTEXT"


#: a compatible service, v1 without the /v1 prefix as the seed allows; process URLs are
#: followed only at <base>/process/<id>, on exactly this host
BASE = "https://srv01.cloudconvert.com"


def provider(handler: object = None, base_url: str = BASE) -> CloudConvertV1:
    transport = httpx.MockTransport(handler) if handler else None  # type: ignore[arg-type]
    return CloudConvertV1(api_key="v1-key", signing_secret=None, base_url=base_url,
                          http=httpx.Client(transport=transport))


def fixture(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / name).read_bytes())
    return document


def spec(kind: str = "presigned_url") -> JobSpec:
    read = Grant(kind=kind, storage="s3", location="bkt", key="inbox/a b.png",  # type: ignore[arg-type]
                 scope="read", expires_at=NOW,
                 url="https://bkt.s3.amazonaws.com/inbox/a%20b.png?X-Amz-Signature=s")
    return JobSpec(source=ObjectRef("s3", "bkt", "inbox/a b.png"), rule="images",
                   conversion=ConversionSpec("png", "pdf", {"density": 150}), route="relay",
                   read_grant=read, write_grant=None,
                   output=OutputTarget("s3", "bkt", "outbox/a b.pdf"), context_token=TOKEN,
                   webhook_url="https://hooks.example/callbacks/cloudconvert_v1",
                   filename="a b.png")


def callback(name: str = "callback_finished.json", **changes: str) -> CallbackRequest:
    return CallbackRequest(b"", query=urlencode({"token": TOKEN, **fixture(name), **changes}),
                           method="GET")


def test_the_start_document_downloads_from_the_signed_url_and_calls_back_with_a_token() -> None:
    document = provider().build_job(spec())
    assert {k: v for k, v in document.items() if k != "callback"} == {
        "inputformat": "png", "outputformat": "pdf", "input": "download",
        "file": "https://bkt.s3.amazonaws.com/inbox/a%20b.png?X-Amz-Signature=s",
        "filename": "a b.png", "tag": TOKEN, "wait": False, "save": True,
        "converteroptions": {"density": 150}}
    url = urlsplit(document["callback"])
    assert url.path == "/callbacks/cloudconvert_v1"
    assert parse_qs(url.query) == {"token": [TOKEN]}


def test_only_signed_urls_can_be_imported() -> None:
    with pytest.raises(ProviderError):
        provider().build_job(spec("sts_session"))


def test_create_makes_a_process_records_its_id_then_starts_it_at_its_process_url() -> None:
    seen: list[str] = []
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        seen.append(f"{request.method} {request.url}")
        if request.url.path == "/process":
            return httpx.Response(200, json=fixture("process_created.json"))
        return httpx.Response(200, json={"id": "v4cw72hf3", "step": "input"})

    assert provider(handler).start(spec(), on_created=lambda job: seen.append(
        f"recorded {job}")) == "v4cw72hf3"
    # the process cannot run before the bridge knows which one it created for the context
    assert seen == ["POST https://srv01.cloudconvert.com/process", "recorded v4cw72hf3",
                    "POST https://srv01.cloudconvert.com/process/v4cw72hf3"]
    assert json.loads(requests[0].content) == {"apikey": "v1-key", "inputformat": "png",
                                               "outputformat": "pdf"}
    started = json.loads(requests[1].content)
    assert started["input"] == "download" and started["tag"] == TOKEN
    assert "apikey" not in started  # the process URL is the capability


@pytest.mark.parametrize("status", [429, 503])
def test_a_process_url_is_never_posted_twice(status: int) -> None:
    """Process URLs are one-time (seed 001): a start answered 429 or 503 is reported, the
    process URL is not POSTed again."""
    starts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/process":
            return httpx.Response(200, json=fixture("process_created.json"))
        starts.append(str(request.url))
        return httpx.Response(status, headers={"Retry-After": "0"}, json={"error": "busy"})

    with pytest.raises(ProviderUnavailable):
        provider(handler).start(spec())
    assert starts == ["https://srv01.cloudconvert.com/process/v4cw72hf3"]


def test_a_process_that_could_not_be_recorded_is_never_started() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=fixture("process_created.json"))

    def refuse(job_id: str) -> None:
        raise StaleWrite("the record changed")

    with pytest.raises(StaleWrite):
        provider(handler).start(spec(), on_created=refuse)
    assert [r.url.path for r in seen] == ["/process"]


def test_a_process_url_on_a_foreign_domain_is_not_started() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"id": "x", "url": "//evil.example/process/x"})

    with pytest.raises(ProviderError, match="host"):
        provider(handler).start(spec())


def test_a_process_url_on_a_sibling_host_is_not_started() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"id": "x",
                                         "url": "//attacker.example-paas.com/process/x"})

    with pytest.raises(ProviderError, match="host"):
        provider(handler, "https://conv.example-paas.com/v1").start(spec())
    assert [r.url.host for r in seen] == ["conv.example-paas.com"]


def test_a_process_url_elsewhere_on_the_services_host_is_not_started() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/process":
            return httpx.Response(200, json={"id": "x", "url": "//srv01.cloudconvert.com/up/x"})
        raise AssertionError(f"the process must not be started, got {request.url}")

    with pytest.raises(ProviderError, match="/process/x"):
        provider(handler).start(spec())


@pytest.mark.parametrize(("base", "url", "allowed"), [
    # a sibling host of the service's domain may be anyone's (a PaaS hands them out)
    ("https://api.cloudconvert.com/v1", "//srv01.cloudconvert.com/process/a", False),
    ("https://conv.example-paas.com/v1", "//attacker.example-paas.com/process/a", False),
    ("https://api.cloudconvert.com/v1", "https://api.cloudconvert.com/process/a", True),
    ("https://api.cloudconvert.com/v1", "//api.cloudconvert.com/process/a", True),
    ("https://api.cloudconvert.com/v1", "//API.cloudconvert.com/process/a", True),
    ("https://api.cloudconvert.com/v1", "//api.cloudconvert.com:8443/process/a", False),
    ("https://api.cloudconvert.com/v1", "//user@api.cloudconvert.com/process/a", False),
    ("https://api.cloudconvert.com/v1", "//evil.example/process/a", False),
    ("https://api.cloudconvert.com/v1", "//cloudconvert.com.evil.example/process/a", False),
    ("https://api.cloudconvert.com/v1", "//evilcloudconvert.com/process/a", False),
    ("https://api.cloudconvert.com/v1", "http://srv01.cloudconvert.com/process/a", False),
    ("http://127.0.0.1:8765/v1", "//127.0.0.1:8765/v1/process/a", True),
    ("http://127.0.0.1:8765/v1", "//127.0.0.2:8765/v1/process/a", False),
    ("http://127.0.0.1:8765/v1", "//127.0.0.1:9999/v1/process/a", False),
    ("https://api.cloudconvert.com/v1", "", False),
])
def test_process_urls_are_followed_only_on_exactly_the_services_host(base: str, url: str,
                                                               allowed: bool) -> None:
    assert (provider(base_url=base).provider_url(url) is not None) is allowed


def test_a_callback_without_a_token_or_with_a_bad_id_is_refused() -> None:
    with pytest.raises(CallbackSignatureError):
        provider().accept_callback(CallbackRequest(b"", query="id=v4cw72hf3&step=finished"))
    with pytest.raises(CallbackError):
        provider().accept_callback(callback(id="../../admin"))


@pytest.mark.parametrize("process_id", ["v4cw72hf3\n", "v4cw72hf3\r", " v4cw72hf3", "",
                                        "a" * 65])
def test_a_process_id_that_is_not_exactly_an_id_is_a_bad_request(process_id: str) -> None:
    with pytest.raises(CallbackError) as refused:
        provider().accept_callback(callback(id=process_id))
    assert refused.value.status == 400


def test_a_callback_naming_a_sibling_host_is_refused_without_any_request() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no request may be made, got {request.url}")

    adapter = provider(handler, "https://conv.example-paas.com/v1")
    request = callback(url="//attacker.example-paas.com/process/v4cw72hf3")
    # refused with the cheap checks, before the callback could be queued
    with pytest.raises(CallbackSignatureError):
        adapter.accept_callback(request)


def test_a_callback_for_a_step_that_is_not_final_needs_no_action() -> None:
    assert provider().accept_callback(callback(step="convert")) is None


def test_confirm_reads_the_process_and_returns_what_it_says() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=fixture("process_finished.json"))

    adapter = provider(handler)
    request = callback()
    outcome = adapter.accept_callback(request)
    assert outcome is not None and outcome.context_token == TOKEN
    confirmed = adapter.confirm(outcome, request)
    assert confirmed is not None and confirmed.status == "finished"
    assert str(seen[0].url) == "https://srv01.cloudconvert.com/process/v4cw72hf3"
    assert "apikey" not in str(seen[0].url) and "authorization" not in seen[0].headers
    assert [(o.filename, o.size, o.url) for o in confirmed.outputs] == [
        ("sunset beach.pdf", 24213, "https://srv01.cloudconvert.com/download/~ugl5vnrpfO")]


def test_a_failed_conversion_carries_v1s_status_code_and_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json=fixture("process_error.json"))

    adapter = provider(handler)
    request = callback("callback_error.json")
    outcome = adapter.accept_callback(request)
    assert outcome is not None
    confirmed = adapter.confirm(outcome, request)
    assert confirmed is not None and confirmed.status == "failed"
    assert (confirmed.failed_task, confirmed.code, confirmed.message) == (
        "convert", "422", "The input file is not a valid PNG image")


@pytest.mark.parametrize("change", ["tag", "id"])
def test_a_process_that_does_not_carry_the_callbacks_token_is_refused(change: str) -> None:
    process = {**fixture("process_finished.json"), change: "something-else"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=process)

    adapter = provider(handler)
    outcome = adapter.accept_callback(callback())
    assert outcome is not None
    with pytest.raises(CallbackSignatureError):
        adapter.confirm(outcome, callback())


@pytest.mark.parametrize("url", [
    "//attacker.example/process/v4cw72hf3",
    # on the service's own host, but not where it shows this process: an attacker's own
    # output file there could say anything
    "//srv01.cloudconvert.com/download/~ugl5vnrpfO",
    "//srv01.cloudconvert.com/process/other",
    "//srv01.cloudconvert.com/process/v4cw72hf3?wait",
    "",
])
def test_a_callback_pointing_elsewhere_is_refused_without_any_request(url: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"no request may be made, got {request.url}")

    adapter = provider(handler)
    with pytest.raises(CallbackSignatureError):
        adapter.accept_callback(callback(url=url))


def test_an_unknown_process_is_refused_and_a_broken_service_is_retried_later() -> None:
    answers = [httpx.Response(404, json={"error": "Process not found.", "code": 404}),
               httpx.Response(500, text="oops")]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0)

    adapter = provider(handler)
    outcome = adapter.accept_callback(callback())
    assert outcome is not None
    with pytest.raises(CallbackError):
        adapter.confirm(outcome, callback())
    with pytest.raises(ProviderUnavailable):
        adapter.confirm(outcome, callback())
