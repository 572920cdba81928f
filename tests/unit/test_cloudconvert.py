"""CloudConvert v2 adapter: job documents, webhook signatures, callback parsing, API errors."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convbridge.errors import (
    CallbackError,
    CallbackSignatureError,
    ProviderRejected,
    ProviderUnavailable,
)
from convbridge.http import deadline_from
from convbridge.model import (
    CallbackRequest,
    ConversionSpec,
    Grant,
    JobSpec,
    ObjectRef,
    OutputFile,
    OutputTarget,
    source_tag,
)
from convbridge.pipeline import output_keys
from convbridge.providers.cloudconvert import CloudConvert, may_give_several_files
from convbridge.runtime import raw_body
from devstack.sandbox.models import ExportS3, export_keys
from devstack.sandbox.storage_io import S3Access

FIXTURES = Path(__file__).parent.parent / "fixtures" / "cloudconvert"
SECRET = "whsec-test-secret"
NOW = datetime(2026, 11, 23, tzinfo=UTC)


def provider(handler: object = None) -> CloudConvert:
    transport = httpx.MockTransport(handler) if handler else None  # type: ignore[arg-type]
    return CloudConvert(api_key="api-key", signing_secret=SECRET,
                        base_url="https://api.cloudconvert.com/v2",
                        http=httpx.Client(transport=transport))


def sign(body: bytes, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def spec(read_kind: str = "presigned_url", route: str = "native") -> JobSpec:
    source = ObjectRef(storage="s3", location="bkt", key="inbox/a b.png", version="v1", size=9)
    creds = {"access_key_id": "ASIAREAD", "secret_access_key": "readsecret",
             "session_token": "readtoken"}
    read = Grant(kind=read_kind, storage="s3", location="bkt", key="inbox/a b.png",  # type: ignore[arg-type]
                 scope="read", expires_at=NOW, region="eu-central-1",
                 endpoint="http://127.0.0.1:9000",
                 url="https://bkt.s3.amazonaws.com/inbox/a%20b.png?X-Amz-Signature=s",
                 secret=creds if read_kind == "sts_session" else {})
    write = Grant(kind="sts_session", storage="s3", location="bkt", key="outbox/a b.pdf",
                  scope="write", expires_at=NOW, region="eu-central-1",
                  endpoint="http://127.0.0.1:9000",
                  secret={"access_key_id": "ASIAWRITE", "secret_access_key": "writesecret",
                          "session_token": "writetoken"})
    return JobSpec(source=source, rule="images", route=route,  # type: ignore[arg-type]
                   conversion=ConversionSpec("png", "pdf", {"quality": 70, "input": "evil"}),
                   read_grant=read, write_grant=write if route == "native" else None,
                   output=OutputTarget("s3", "bkt", "outbox/a b.pdf"), context_token="CTX",
                   webhook_url="https://hooks.example/callbacks/cloudconvert",
                   filename="a b.png")


def test_presigned_read_becomes_import_url_and_native_write_export_s3() -> None:
    job = provider().build_job(spec())
    tasks = job["tasks"]
    assert tasks["import-source"] == {
        "operation": "import/url", "filename": "a b.png",
        "url": "https://bkt.s3.amazonaws.com/inbox/a%20b.png?X-Amz-Signature=s"}
    assert tasks["convert"]["input"] == "import-source"  # an option cannot rewire the job
    assert tasks["convert"]["quality"] == 70
    assert tasks["convert"]["output_format"] == "pdf"
    export = tasks["export-output"]
    assert export["operation"] == "export/s3"
    assert export["key"] == "outbox/a b.pdf"
    assert export["session_token"] == "writetoken"
    assert export["endpoint"] == "http://127.0.0.1:9000"
    # the loop-guard marker, and the source tag that lets a new version replace this output
    assert export["metadata"] == {"convbridge-output": "images",
                                  "convbridge-source": source_tag("bkt", "inbox/a b.png")}
    assert job["tag"] == "CTX"
    assert job["webhook_url"] == "https://hooks.example/callbacks/cloudconvert"


def test_sts_read_becomes_import_s3_with_session_token() -> None:
    task = provider().build_job(spec("sts_session"))["tasks"]["import-source"]
    assert task["operation"] == "import/s3"
    assert (task["bucket"], task["key"], task["region"]) == ("bkt", "inbox/a b.png",
                                                             "eu-central-1")
    assert task["access_key_id"] == "ASIAREAD" and task["session_token"] == "readtoken"


def test_relay_route_exports_to_url() -> None:
    task = provider().build_job(spec(route="relay"))["tasks"]["export-output"]
    assert task == {"operation": "export/url", "input": "convert"}


def test_job_spec_repr_shows_no_credential() -> None:
    text = repr(spec("sts_session"))
    for secret in ("readsecret", "readtoken", "writesecret", "writetoken", "X-Amz-Signature"):
        assert secret not in text


def test_create_job_posts_with_bearer_and_returns_id() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"data": {"id": "job-1", "status": "waiting"}})

    assert provider(handler).start(spec()) == "job-1"
    assert seen[0].url == "https://api.cloudconvert.com/v2/jobs"
    assert seen[0].headers["Authorization"] == "Bearer api-key"


def test_422_is_rejected_with_the_providers_message_and_429_is_unavailable() -> None:
    def invalid(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"message": "The given data was invalid.",
                                         "code": "INVALID_DATA"})

    with pytest.raises(ProviderRejected) as caught:
        provider(invalid).start(spec())
    assert caught.value.code == "INVALID_DATA"
    assert "The given data was invalid." in str(caught.value)

    def busy(request: httpx.Request) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "3"}, json={"message": "slow down"})

    with deadline_from(lambda: 1000), pytest.raises(ProviderUnavailable) as unavailable:
        provider(busy).start(spec())
    assert "slow down" in str(unavailable.value)


# signatures


def fixture_bytes(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_valid_signature_is_accepted_and_parsed() -> None:
    body = fixture_bytes("webhook_job_finished.json")
    outcome = provider().accept_callback(
        CallbackRequest(body, {"CloudConvert-Signature": sign(body)}))
    assert outcome is not None and outcome.status == "finished"


def test_header_name_is_case_insensitive() -> None:
    body = fixture_bytes("webhook_job_finished.json")
    assert provider().accept_callback(CallbackRequest(body, {"cloudconvert-signature": sign(body)}))


@pytest.mark.parametrize("case", ["tampered", "wrong-secret", "missing", "empty", "uppercase-junk"])
def test_bad_signatures_are_refused(case: str) -> None:
    body = fixture_bytes("webhook_job_finished.json")
    headers = {"CloudConvert-Signature": sign(body)}
    if case == "tampered":
        body = body.replace(b"sunset", b"sunrise")
    elif case == "wrong-secret":
        headers = {"CloudConvert-Signature": sign(body, "other")}
    elif case == "missing":
        headers = {}
    elif case == "empty":
        headers = {"CloudConvert-Signature": ""}
    else:
        headers = {"CloudConvert-Signature": "Z" * 64}
    with pytest.raises(CallbackSignatureError):
        provider().accept_callback(CallbackRequest(body, headers))


def test_base64_encoded_event_bodies_are_verified_after_decoding() -> None:
    body = fixture_bytes("webhook_job_failed.json")
    event = {"body": base64.b64encode(body).decode(), "isBase64Encoded": True}
    raw = raw_body(event)
    assert raw == body
    assert provider().accept_callback(CallbackRequest(raw, {"CloudConvert-Signature": sign(body)}))


def test_escaped_slashes_are_verified_as_sent_not_reserialised() -> None:
    body = (b'{"event":"job.failed","job":{"id":"j","tag":"CTX","status":"error","tasks":'
            b'[{"name":"convert","operation":"convert","status":"error","code":"X",'
            b'"message":"bad \\/ path"}]}}')
    raw = raw_body({"body": body.decode(), "isBase64Encoded": False})
    outcome = provider().accept_callback(
        CallbackRequest(raw, {"CloudConvert-Signature": sign(body)}))
    assert outcome is not None and outcome.message == "bad / path"
    reserialised = json.dumps(json.loads(body)).encode()
    with pytest.raises(CallbackSignatureError):
        provider().accept_callback(
            CallbackRequest(reserialised, {"CloudConvert-Signature": sign(body)}))


def test_no_configured_secret_refuses_everything() -> None:
    body = fixture_bytes("webhook_job_finished.json")
    bare = CloudConvert(api_key="k", signing_secret=None, base_url="https://x", http=httpx.Client())
    with pytest.raises(CallbackSignatureError):
        bare.accept_callback(CallbackRequest(body, {"CloudConvert-Signature": sign(body)}))


# callback parsing


def test_finished_fixture_parses_outputs() -> None:
    outcome = provider().parse_callback(fixture_bytes("webhook_job_finished.json"))
    assert outcome is not None
    assert outcome.job_id == "c677ccf7-4a8c-4ff5-9f2c-4fd5a6e5a1e2"
    assert outcome.context_token == "CONTEXT"
    assert [(o.filename, o.size) for o in outcome.outputs] == [("sunset beach.pdf", 24213)]
    assert outcome.outputs[0].url and outcome.outputs[0].url.startswith("https://")
    assert outcome.ended_at == datetime(2026, 11, 23, 12, 0, 4, tzinfo=UTC)


def test_failed_fixture_names_the_task_that_really_failed() -> None:
    outcome = provider().parse_callback(fixture_bytes("webhook_job_failed.json"))
    assert outcome is not None and outcome.status == "failed"
    assert (outcome.failed_task, outcome.code) == ("convert", "CONVERSION_FAILED")
    assert outcome.message == "The input file is not a valid PNG image"
    assert outcome.outputs == ()


def test_other_events_need_no_action_and_garbage_is_an_error() -> None:
    assert provider().parse_callback(b'{"event": "job.created", "job": {"id": "x"}}') is None
    with pytest.raises(CallbackError):
        provider().parse_callback(b"not json")
    with pytest.raises(CallbackError):
        provider().parse_callback(b'{"job": {}}')


def test_a_lost_create_answer_finds_the_job_by_tag_instead_of_creating_another() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.method} {request.url.path}")
        if request.method == "POST":
            raise httpx.ReadTimeout("lost", request=request)
        assert request.url.params["filter[tag]"] == "CTX"
        return httpx.Response(200, json={"data": [{"id": "job-7", "tag": "CTX"}]})

    assert provider(handler).start(spec()) == "job-7"
    assert calls == ["POST /v2/jobs", "GET /v2/jobs"]


def test_a_lost_create_that_made_nothing_is_sent_again() -> None:
    posts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posts.append(1)
            if len(posts) == 1:
                raise httpx.ReadTimeout("lost", request=request)
            return httpx.Response(201, json={"data": {"id": "job-8"}})
        return httpx.Response(200, json={"data": []})

    assert provider(handler).start(spec()) == "job-8"
    assert len(posts) == 2


#: a provider's page names: safe, distinct file names as CloudConvert reports them
PAGE_NAMES = st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 _.-]{0,20}-[1-9][0-9]{0,2}\.png",
                                    fullmatch=True), min_size=1, max_size=6, unique=True)
FORMATS = st.sampled_from(sorted({"pdf", "tif", "gif", "docx", "png", "jpg", "txt"}))


@settings(max_examples=150, deadline=None)
@given(names=PAGE_NAMES, input_format=FORMATS, output_format=FORMATS)
def test_exported_keys_are_the_keys_the_bridge_collects(names: list[str], input_format: str,
                                                        output_format: str) -> None:
    """150 examples: the objects CloudConvert writes for the export/s3 task the bridge builds
    (named by the sandbox's export_keys, which models the documented key / key_prefix) are
    where the bridge looks: pipeline.output_keys for several files; for one, the output key
    or the folder entry the bridge moves to it."""
    conversion = ConversionSpec(input_format, output_format)
    job_spec = replace(spec(), conversion=conversion)
    export = provider().build_job(job_spec)["tasks"]["export-output"]
    output_key = job_spec.output.key
    assert ("key_prefix" in export) != ("key" in export)
    assert ("key_prefix" in export) == may_give_several_files(conversion)
    if "key" in export:
        names = names[:1]  # the conversion cannot give several files
    access = S3Access(export["bucket"], export["region"], "id", "secret")
    written = export_keys(ExportS3(access, export.get("key"), export.get("key_prefix")), names)
    if len(names) == 1:
        assert written[0] in (output_key, f"{output_key}/{names[0]}")
    else:
        outputs = tuple(OutputFile(filename=name, size=1) for name in names)
        assert output_keys(output_key, outputs) == written
