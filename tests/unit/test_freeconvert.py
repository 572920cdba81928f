"""FreeConvert v1 adapter: job documents per grant, the tag lookup, webhook signatures."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convbridge.errors import CallbackError, CallbackSignatureError, ProviderRejected
from convbridge.model import (
    CallbackRequest,
    ConversionSpec,
    Grant,
    JobSpec,
    ObjectRef,
    OutputTarget,
    source_tag,
)
from convbridge.planner import plan_route
from convbridge.providers.freeconvert import FreeConvert
from convbridge.storage.s3 import S3Storage

FIXTURES = Path(__file__).parent.parent / "fixtures" / "freeconvert"
SECRET = "fc-webhook-secret"
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def provider(handler: object = None, secret: str | None = SECRET) -> FreeConvert:
    transport = httpx.MockTransport(handler) if handler else None  # type: ignore[arg-type]
    return FreeConvert(api_key="fc-key", signing_secret=secret,
                       base_url="https://api.freeconvert.com/v1",
                       http=httpx.Client(transport=transport))


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def s3_spec() -> JobSpec:
    read = Grant(kind="presigned_url", storage="s3", location="bkt", key="inbox/a b.png",
                 scope="read", expires_at=NOW,
                 url="https://bkt.s3.amazonaws.com/inbox/a%20b.png?X-Amz-Signature=s")
    return JobSpec(source=ObjectRef("s3", "bkt", "inbox/a b.png"), rule="images",
                   conversion=ConversionSpec("png", "pdf", {"quality": 70, "input": "evil"}),
                   route="relay", read_grant=read, write_grant=None,
                   output=OutputTarget("s3", "bkt", "outbox/a b.pdf"), context_token="CTX",
                   webhook_url="https://hooks.example/callbacks/freeconvert", filename="a b.png")


def azure_spec() -> JobSpec:
    secret = {"sas_token": "sv=2023&sp=r&sig=READ", "account_name": "acct"}
    read = Grant(kind="sas", storage="azure_blob", location="acct/box", key="inbox/a.png",
                 scope="read", expires_at=NOW, secret=secret)
    write = Grant(kind="sas", storage="azure_blob", location="acct/box", key="outbox/a.pdf",
                  scope="write", expires_at=NOW,
                  secret={"sas_token": "sv=2023&sp=c&sig=WRITE", "account_name": "acct"})
    return JobSpec(source=ObjectRef("azure_blob", "acct/box", "inbox/a.png"), rule="images",
                   conversion=ConversionSpec("png", "pdf"), route="native", read_grant=read,
                   write_grant=write, output=OutputTarget("azure_blob", "acct/box",
                                                          "outbox/a.pdf"),
                   context_token="CTX", webhook_url="https://hooks.example/x", filename="a.png")


def test_s3_source_is_imported_from_its_url_and_exported_to_freeconverts() -> None:
    job = provider().build_job(s3_spec())
    assert job["tag"] == "CTX"
    assert "webhook_url" not in job  # FreeConvert webhooks belong to the account
    tasks = job["tasks"]
    assert tasks["import-source"] == {
        "operation": "import/url", "filename": "a b.png",
        "url": "https://bkt.s3.amazonaws.com/inbox/a%20b.png?X-Amz-Signature=s"}
    assert tasks["convert"] == {"operation": "convert", "input": "import-source",
                                "input_format": "png", "output_format": "pdf",
                                "options": {"quality": 70, "input": "evil"}}
    # named as the output: FreeConvert otherwise names the download by its file id
    assert tasks["export-output"] == {"operation": "export/url", "input": "convert",
                                      "filename": "a b.pdf"}


def test_s3_session_tokens_are_never_planned_since_freeconvert_takes_none() -> None:
    plan = plan_route(S3Storage, FreeConvert, "sts_session")
    assert (plan.read_grant, plan.route, plan.write_grant) == ("presigned_url", "relay", None)


def test_azure_blobs_are_read_and_written_with_a_sas_for_the_one_blob() -> None:
    tasks = provider().build_job(azure_spec())["tasks"]
    assert tasks["import-source"] == {
        "operation": "import/azureblob", "storage_account": "acct", "container": "box",
        "blob": "inbox/a.png", "sas_token": "sv=2023&sp=r&sig=READ", "filename": "a.png"}
    export = tasks["export-output"]
    assert export["operation"] == "export/azureblob" and export["input"] == "convert"
    assert (export["blob"], export["sas_token"]) == ("outbox/a.pdf", "sv=2023&sp=c&sig=WRITE")
    assert export["metadata"] == {"convbridge_output": "images",
                                  "convbridge_source": source_tag("acct/box", "inbox/a.png")}
    assert "storage_access_key" not in json.dumps(tasks)


def test_create_posts_the_tasks_with_a_bearer_key() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, content=(FIXTURES / "job_created.json").read_bytes())

    assert provider(handler).start(s3_spec()) == "65a1f0c2e39b480011724973"
    assert str(seen[0].url) == "https://api.freeconvert.com/v1/process/jobs"
    assert seen[0].headers["Authorization"] == "Bearer fc-key"
    assert json.loads(seen[0].content)["tag"] == "CTX"


def test_a_lost_create_answer_finds_the_job_by_its_tag() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.method == "POST":
            raise httpx.ReadTimeout("lost", request=request)
        assert request.url.params["tag"] == "CTX"
        return httpx.Response(200, json={"docs": [{"id": "job-7", "tag": "CTX"}],
                                         "totalDocs": 1})

    assert provider(handler).start(s3_spec()) == "job-7"
    assert calls == ["POST /v1/process/jobs", "GET /v1/process/jobs"]


def test_a_400_is_rejected_with_freeconverts_message() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"message": "Your request parameter is invalid."})

    with pytest.raises(ProviderRejected, match="parameter is invalid"):
        provider(handler).start(s3_spec())


def test_a_signed_webhook_is_accepted_and_parsed() -> None:
    body = (FIXTURES / "webhook_job_success.json").read_bytes()
    outcome = provider().accept_callback(
        CallbackRequest(body, {"freeconvert-signature": sign(body)}))
    assert outcome is not None and outcome.status == "finished"
    assert outcome.context_token == "CONTEXT" and outcome.event == "job.success"
    assert outcome.outputs[0].url == ("https://server301.freeconvert.com/api/download/"
                                      "65a1f0c2e39b480011724976/sunset%20beach.pdf")


@pytest.mark.parametrize("case", ["tampered", "wrong-secret", "missing", "empty",
                                  "base64-not-hex", "no-secret-configured"])
def test_bad_signatures_are_refused(case: str) -> None:
    body = (FIXTURES / "webhook_job_success.json").read_bytes()
    headers = {"FreeConvert-Signature": sign(body)}
    adapter = provider()
    if case == "tampered":
        body = body.replace(b"sunset", b"sunrise")
    elif case == "wrong-secret":
        headers["FreeConvert-Signature"] = sign(body, "other")
    elif case == "missing":
        headers = {}
    elif case == "empty":
        headers["FreeConvert-Signature"] = ""
    elif case == "base64-not-hex":
        import base64

        digest = hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
        headers["FreeConvert-Signature"] = base64.b64encode(digest).decode()
    else:
        adapter = provider(secret=None)
    with pytest.raises(CallbackSignatureError):
        adapter.accept_callback(CallbackRequest(body, headers))


def test_the_failed_webhook_names_the_task_that_really_failed() -> None:
    outcome = provider().parse_callback((FIXTURES / "webhook_job_failed.json").read_bytes())
    assert outcome is not None and outcome.status == "failed"
    assert (outcome.failed_task, outcome.code) == ("convert", "CONVERSION_FAILED")
    assert outcome.message == "The input file is not a valid PNG image"
    assert outcome.outputs == ()


def test_created_events_need_no_action_and_garbage_is_an_error() -> None:
    created = json.dumps({"event": "job.created", "job": {"id": "j", "status": "created"}})
    assert provider().parse_callback(created.encode()) is None
    with pytest.raises(CallbackError):
        provider().parse_callback(b"not json")
    with pytest.raises(CallbackError):
        provider().parse_callback(b"[1, 2]")


def test_a_bare_job_body_is_read_by_its_status() -> None:
    job = json.loads((FIXTURES / "webhook_job_success.json").read_bytes())["job"]
    outcome = provider().parse_callback(json.dumps(job).encode())
    assert outcome is not None and outcome.event == "job.success"
    job["status"] = "processing"
    assert provider().parse_callback(json.dumps(job).encode()) is None


def _success_job() -> dict[str, Any]:
    job: dict[str, Any] = json.loads((FIXTURES / "webhook_job_success.json").read_bytes())["job"]
    return job


def test_a_job_finished_webhook_settles_the_job_by_its_status() -> None:
    """The seed registers webhooks for ``job.finished`` beside ``job.success``."""
    body = json.dumps({"event": "job.finished", "job": _success_job()}).encode()
    outcome = provider().accept_callback(
        CallbackRequest(body, {"FreeConvert-Signature": sign(body)}))
    assert outcome is not None and outcome.status == "finished"
    assert outcome.event == "job.finished" and len(outcome.outputs) == 1


@pytest.mark.parametrize("status", ["canceled", "deleted", "insufficiant_minute", "failed"])
def test_a_task_ended_without_success_fails_the_job(status: str) -> None:
    job = _success_job()
    convert = next(t for t in job["tasks"] if t["name"] == "convert")
    convert.update(status=status, message="Task was canceled", code="CANCELED")
    for event in ("job.finished", "job.success"):
        outcome = provider().parse_callback(json.dumps({"event": event, "job": job}).encode())
        assert outcome is not None and outcome.status == "failed"
        assert (outcome.failed_task, outcome.code) == ("convert", "CANCELED")


def test_every_file_of_a_multi_file_export_is_collected_under_its_name() -> None:
    job = _success_job()
    export = next(t for t in job["tasks"] if t["operation"] == "export/url")
    base = "https://server301.freeconvert.com/api/download/65a1f0c2e39b480011724976"
    export["result"] = {"files": [
        {"filename": "page-1.png", "size": 10, "url": f"{base}/a1b2.png"},
        {"url": f"{base}/page-2.png"}]}
    outcome = provider().parse_callback(json.dumps({"event": "job.success", "job": job})
                                        .encode())
    assert outcome is not None
    assert [(o.filename, o.size, o.url) for o in outcome.outputs] == [
        ("page-1.png", 10, f"{base}/a1b2.png"), ("page-2.png", None, f"{base}/page-2.png")]


#: every task status the seed lists
_TASK_STATUSES = st.sampled_from(["created", "processing", "completed", "canceled", "failed",
                                  "deleted", "insufficiant_minute"])


#: one adapter for every example: building its HTTP client is what would take the time
_PARSER = provider()


@settings(max_examples=200, deadline=None)  # 200 examples, well under a second
@given(statuses=st.lists(_TASK_STATUSES, min_size=3, max_size=3),
       event=st.sampled_from(["job.success", "job.finished", "job.failed"]))
def test_a_job_is_finished_only_when_no_task_ended_without_success(
        statuses: list[str], event: str) -> None:
    """A settled FreeConvert job reports finished, with its outputs, only if no task was
    canceled, failed, deleted or ran out of minutes, and the event does not say it failed."""
    job = _success_job()
    for task, status in zip(job["tasks"], statuses, strict=True):
        task["status"] = status
    outcome = _PARSER.parse_callback(json.dumps({"event": event, "job": job}).encode())
    assert outcome is not None
    unsuccessful = {"canceled", "failed", "deleted", "insufficiant_minute"} & set(statuses)
    assert (outcome.status == "failed") == bool(unsuccessful or event == "job.failed")
    assert len(outcome.outputs) == (1 if statuses[2] == "completed" else 0)
