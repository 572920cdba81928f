"""Online-Convert v2 adapter: job documents per grant, the callback token, and the re-fetch
that decides what happened (never the posted body)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from convbridge.errors import CallbackError, CallbackSignatureError, ProviderError, StaleWrite
from convbridge.model import (
    CallbackRequest,
    ConversionSpec,
    Grant,
    JobSpec,
    ObjectRef,
    OutputTarget,
)
from convbridge.providers.onlineconvert import OnlineConvert, parse_job

FIXTURES = Path(__file__).parent.parent / "fixtures" / "onlineconvert"
NOW = datetime(2026, 11, 23, tzinfo=UTC)
TOKEN = "CONTEXT"


def provider(handler: object = None) -> OnlineConvert:
    transport = httpx.MockTransport(handler) if handler else None  # type: ignore[arg-type]
    return OnlineConvert(api_key="oc-key", signing_secret=None,
                         base_url="https://api.api2convert.com/v2",
                         http=httpx.Client(transport=transport))


def fixture(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((FIXTURES / name).read_bytes())
    return document


def spec(read_kind: str = "presigned_url", route: str = "relay") -> JobSpec:
    creds = {"access_key_id": "ASIAREAD", "secret_access_key": "readsecret",
             "session_token": "readtoken"}
    read = Grant(kind=read_kind, storage="s3", location="bkt", key="inbox/a b.png",  # type: ignore[arg-type]
                 scope="read", expires_at=NOW, region="eu-west-1",
                 url="https://bkt.s3.amazonaws.com/inbox/a%20b.png?X-Amz-Signature=s",
                 secret=creds if read_kind == "sts_session" else {})
    write = Grant(kind="sts_session", storage="s3", location="bkt", key="outbox/a b.pdf",
                  scope="write", expires_at=NOW, region="eu-west-1",
                  secret={"access_key_id": "ASIAWRITE", "secret_access_key": "writesecret",
                          "session_token": "writetoken"})
    return JobSpec(source=ObjectRef("s3", "bkt", "inbox/a b.png"), rule="images",
                   conversion=ConversionSpec("png", "pdf", {"dpi": 300}),
                   route=route,  # type: ignore[arg-type]
                   read_grant=read, write_grant=write if route == "native" else None,
                   output=OutputTarget("s3", "bkt", "outbox/a b.pdf"), context_token="CT X+/=",
                   webhook_url="https://hooks.example/callbacks/onlineconvert",
                   filename="a b.png")


def called(body: bytes, **params: str) -> CallbackRequest:
    """A callback of ``body`` to the URL with query ``params``."""
    return CallbackRequest(body, query=urlencode(params))


def test_a_signed_url_becomes_a_remote_input_and_outputs_come_back_by_uri() -> None:
    job = provider().build_job(spec())
    assert job["input"] == [{"type": "remote", "filename": "a b.png",
                             "source": "https://bkt.s3.amazonaws.com/inbox/a%20b.png?"
                                       "X-Amz-Signature=s"}]
    assert job["conversion"] == [{"target": "pdf", "options": {"dpi": 300}}]
    assert job["notify_status"] is False
    callback = urlsplit(job["callback"])
    assert callback.path == "/callbacks/onlineconvert"
    assert parse_qs(callback.query) == {"token": ["CT X+/="]}  # encoded, decoded back


def test_sts_grants_become_amazons3_input_and_output_target_with_sessiontoken() -> None:
    job = provider().build_job(spec("sts_session", route="native"))
    assert job["input"] == [{
        "type": "cloud", "source": "amazons3", "filename": "a b.png",
        "parameters": {"bucket": "bkt", "file": "inbox/a b.png", "region": "eu-west-1"},
        "credentials": {"accesskeyid": "ASIAREAD", "secretaccesskey": "readsecret",
                        "sessiontoken": "readtoken"}}]
    assert job["conversion"][0]["output_target"] == [{
        "type": "amazons3",
        "parameters": {"bucket": "bkt", "file": "outbox/a b.pdf", "region": "eu-west-1"},
        "credentials": {"accesskeyid": "ASIAWRITE", "secretaccesskey": "writesecret",
                        "sessiontoken": "writetoken"}}]


def test_an_azure_write_grant_is_refused_rather_than_widened() -> None:
    azure = Grant(kind="sas", storage="azure_blob", location="a/c", key="o.pdf", scope="w",
                  expires_at=NOW, secret={"sas_token": "x", "account_name": "a"})
    with pytest.raises(ProviderError):
        provider().build_job(replace(spec(route="native"), write_grant=azure))
    assert "azure_blob" not in OnlineConvert.native_exports


def test_a_job_is_created_held_recorded_and_only_then_processed() -> None:
    seen: list[str] = []
    requests: list[httpx.Request] = []
    job_id = "8c267416-25dc-4298-8a26-b48f7eaa8000"

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        seen.append(f"{request.method} {request.url}")
        return httpx.Response(201 if request.method == "POST" else 200,
                              json={"id": job_id, "status": {"code": "incomplete"}})

    assert provider(handler).start(spec(), on_created=lambda job: seen.append(
        f"recorded {job}")) == job_id
    # built step by step (seed: process false, then PATCH process true): the job cannot run,
    # and so cannot call back, before the bridge recorded which job it made for the context
    assert seen == ["POST https://api.api2convert.com/v2/jobs", f"recorded {job_id}",
                    f"PATCH https://api.api2convert.com/v2/jobs/{job_id}"]
    created, processed = (json.loads(r.content) for r in requests)
    assert created["process"] is False and created["conversion"][0]["target"] == "pdf"
    assert processed == {"process": True}
    assert all(r.headers["X-Oc-Api-Key"] == "oc-key" for r in requests)


def test_a_job_that_could_not_be_recorded_is_never_processed() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": "8c267416-25dc-4298-8a26-b48f7eaa8000"})

    def refuse(job_id: str) -> None:
        raise StaleWrite("the record changed")

    with pytest.raises(StaleWrite):
        provider(handler).start(spec(), on_created=refuse)
    assert [r.method for r in seen] == ["POST"]


@pytest.mark.parametrize("job_id", ["8c267416-25dc-4298-8a26-b48f7eaa8000\n",
                                    "8c267416-25dc-4298-8a26-b48f7eaa8000\r", "", "a" * 65])
def test_a_job_id_that_is_not_exactly_an_id_is_a_bad_request(job_id: str) -> None:
    body = json.dumps({**fixture("callback_job_completed.json"), "id": job_id})
    with pytest.raises(CallbackError) as refused:
        provider().accept_callback(called(body.encode(), token=TOKEN))
    assert refused.value.status == 400


def test_a_callback_without_a_token_is_refused() -> None:
    body = (FIXTURES / "callback_job_completed.json").read_bytes()
    with pytest.raises(CallbackSignatureError):
        provider().accept_callback(CallbackRequest(body))
    with pytest.raises(CallbackSignatureError):
        provider().accept_callback(called(body, token=""))
    with pytest.raises(CallbackSignatureError):
        provider().accept_callback(CallbackRequest(body, query="token=a&token=b"))


def test_the_posted_body_is_provisional_and_carries_the_urls_token() -> None:
    body = (FIXTURES / "callback_job_completed.json").read_bytes()
    outcome = provider().accept_callback(called(body, token="FROM-URL"))
    assert outcome is not None and outcome.context_token == "FROM-URL"
    running = (FIXTURES / "job_processing.json").read_bytes()
    assert provider().accept_callback(called(running, token="FROM-URL")) is None


def test_a_job_id_that_could_leave_the_jobs_path_is_refused() -> None:
    body = json.dumps({**fixture("callback_job_completed.json"), "id": "../account"})
    with pytest.raises(CallbackError):
        provider().accept_callback(called(body.encode(), token=TOKEN))


def test_confirm_acts_on_the_fetched_job_not_the_posted_one() -> None:
    real = fixture("callback_job_failed.json")
    posted = {**fixture("callback_job_completed.json"), "id": real["id"]}
    posted["output"][0]["uri"] = "https://attacker.example/payload.pdf"
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=real)

    adapter = provider(handler)
    outcome = adapter.accept_callback(called(json.dumps(posted).encode(), token=TOKEN))
    assert outcome is not None and outcome.status == "finished"
    confirmed = adapter.confirm(outcome, called(b"", token=TOKEN))
    assert confirmed is not None and confirmed.status == "failed"
    assert (confirmed.code, confirmed.failed_task) == ("5016", "conversion")
    assert confirmed.outputs == ()
    assert str(seen[0].url) == f"https://api.api2convert.com/v2/jobs/{real['id']}"
    assert seen[0].headers["X-Oc-Api-Key"] == "oc-key"


def test_a_token_from_another_jobs_callback_url_is_refused() -> None:
    other = {**fixture("callback_job_completed.json"),
             "callback": "https://hooks.example/callbacks/onlineconvert?token=OTHER"}

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=other)

    adapter = provider(handler)
    outcome = adapter.accept_callback(called(json.dumps(other).encode(), token=TOKEN))
    assert outcome is not None
    with pytest.raises(CallbackSignatureError):
        adapter.confirm(outcome, called(b"", token=TOKEN))


def test_confirm_waits_for_a_job_still_running_and_refuses_a_different_job() -> None:
    running = fixture("job_processing.json")
    answers = [running, {**running, "id": "someone-else"}]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers.pop(0))

    adapter = provider(handler)
    finished = adapter.accept_callback(
        called((FIXTURES / "callback_job_completed.json").read_bytes(), token=TOKEN))
    assert finished is not None
    assert adapter.confirm(finished, called(b"", token=TOKEN)) is None
    with pytest.raises(ProviderError):
        adapter.confirm(finished, called(b"", token=TOKEN))


@pytest.mark.parametrize(("code", "reported"), [
    (5016, "5016"), (0, "0"), (None, "failed"), (True, "failed"), ("", "failed"),
    ({"nested": 1}, "failed"),
])
def test_an_error_code_is_the_integer_as_text_or_else_the_job_status(code: object,
                                                                      reported: str) -> None:
    job = fixture("callback_job_failed.json")
    job["errors"][0]["code"] = code
    outcome = parse_job(job)
    assert outcome is not None and outcome.status == "failed"
    assert outcome.code == reported
