"""The S3 -> CloudConvert v2 -> S3 flow over real HTTP: moto server, the sandbox, and the real
trigger and webhook handlers behind a local Function URL."""

from __future__ import annotations

import hashlib
import hmac
import json
import re

import httpx
import pytest

from convbridge.context import JobContext, sign_context
from devstack.stack import DevStack
from tests.conftest import png_bytes


def run(stack: DevStack, *keys: str) -> dict:
    summary = stack.trigger({"Records": [r for k in keys for r in stack.s3_event(k)["Records"]]})
    stack.wait()
    return summary


def test_upload_becomes_a_pdf_and_a_finished_record(stack: DevStack) -> None:
    stack.upload("inbox/a/my photo+1.png", png_bytes())
    summary = run(stack, "inbox/a/my photo+1.png")
    assert summary["counts"] == {"submitted": 1}
    record = stack.read_json("results/a/my photo+1.png.json")
    assert record is not None
    assert record["status"] == "finished" and record["route"] == "native"
    assert record["job_id"] == summary["objects"][0]["job_id"]
    assert record["outputs"][0]["key"] == "outbox/a/my photo+1.png.pdf"
    head = stack.s3.head_object(Bucket=stack.bucket, Key="outbox/a/my photo+1.png.pdf")
    assert head["Metadata"].get("convbridge-output") == "images-to-pdf"
    assert head["Metadata"].get("convbridge-source")  # the provider tagged it with its source
    assert record["outputs"][0]["size"] == head["ContentLength"] > 0
    output = stack.s3.get_object(Bucket=stack.bucket, Key="outbox/a/my photo+1.png.pdf")
    body = output["Body"].read()
    assert body.startswith(b"%PDF")
    assert stack.read_json("failures/a/my photo+1.png.json") is None
    job = stack.sandbox.jobs()[0]
    operations = [t["operation"] for t in job["tasks"]]
    assert "import/url" in operations and "export/s3" in operations


def test_sts_read_grant_uses_import_s3(sts_stack: DevStack) -> None:
    sts_stack.upload("inbox/b.png", png_bytes(mode="RGBA"))
    run(sts_stack, "inbox/b.png")
    record = sts_stack.read_json("results/b.png.json")
    assert record is not None and record["status"] == "finished"
    operations = [t["operation"] for t in sts_stack.sandbox.jobs()[0]["tasks"]]
    assert "import/s3" in operations


def test_corrupt_input_gets_a_failure_report_with_the_providers_code(stack: DevStack) -> None:
    stack.upload("inbox/broken.png", b"\x89PNG\r\n\x1a\nnot an image at all")
    run(stack, "inbox/broken.png")
    report = stack.read_json("failures/broken.png.json")
    assert report is not None
    assert report["status"] == "failed" and report["provider"] == "cloudconvert"
    assert report["error"]["task"] == "convert"
    assert report["error"]["code"] == "CONVERSION_FAILED"
    assert report["error"]["message"]
    assert report["job_id"]
    assert stack.read_json("results/broken.png.json")["status"] == "failed"  # type: ignore[index]
    assert stack.objects("outbox/") == {}


def callback(stack: DevStack, body: bytes, signature: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["CloudConvert-Signature"] = signature
    assert stack.webhook is not None
    return httpx.post(f"{stack.webhook.url}/callbacks/cloudconvert", content=body,
                      headers=headers)


def finished_body(token: str, job_id: str = "forged-job") -> bytes:
    return json.dumps({"event": "job.finished", "job": {
        "id": job_id, "tag": token, "status": "finished", "tasks": [
            {"name": "export-output", "operation": "export/url", "status": "finished",
             "result": {"files": [{"filename": "x.pdf", "size": 3,
                                   "url": "http://127.0.0.1:1/x.pdf"}]}}]}}).encode()


def test_forged_callbacks_get_401_and_write_nothing(stack: DevStack) -> None:
    stack.upload("inbox/c.png", png_bytes())
    run(stack, "inbox/c.png")
    before = stack.objects()
    context = JobContext.new(rule="images-to-pdf", storage="s3", location=stack.bucket,
                             key="inbox/c.png", version=None, output_key="outbox/c.png.pdf",
                             route="relay")
    good_token = sign_context(context, stack.context_key.encode())
    body = finished_body(good_token)
    wrong = hmac.new(b"guess", body, hashlib.sha256).hexdigest()
    assert callback(stack, body, None).status_code == 401
    assert callback(stack, body, wrong).status_code == 401
    # A genuine provider signature around a context we did not sign: still refused.
    attacker_context = JobContext.new(rule="images-to-pdf", storage="s3",
                                      location="attacker-bucket", key="inbox/c.png",
                                      version=None, output_key="outbox/c.png.pdf", route="relay")
    forged = finished_body(sign_context(attacker_context, b"a" * 48))
    real_signature = hmac.new(stack.signing_secret.encode(), forged, hashlib.sha256).hexdigest()
    assert callback(stack, forged, real_signature).status_code == 401
    assert callback(stack, b"x" * (2 * 1024 * 1024), wrong).status_code == 413
    assert stack.objects() == before


def test_rejected_inputs_get_failure_reports_and_the_batch_goes_on(stack: DevStack) -> None:
    stack.upload("inbox/empty.png", b"")
    stack.upload("inbox/huge.png", b"\0" * (10 * 1024 * 1024 + 1))
    stack.upload("inbox/noextension", png_bytes())
    stack.upload("inbox/notes.txt", b"hello")
    stack.upload("inbox/fine.png", png_bytes())
    stack.upload("elsewhere/x.png", png_bytes())
    summary = run(stack, "inbox/empty.png", "inbox/huge.png", "inbox/noextension",
                  "inbox/notes.txt", "inbox/fine.png", "elsewhere/x.png")
    statuses = {o["object"].split("/", 3)[-1]: (o["status"], o["reason"])
                for o in summary["objects"]}
    assert statuses["inbox/fine.png"][0] == "submitted"
    assert statuses["inbox/empty.png"][0] == "rejected"
    assert statuses["inbox/huge.png"][0] == "rejected"
    assert statuses["inbox/notes.txt"] == ("skipped", "rule 'images-to-pdf' does not convert "
                                           "this suffix")
    assert statuses["elsewhere/x.png"] == ("skipped", "no rule covers this location and prefix")
    assert stack.read_json("failures/empty.png.json")["error"]["code"] == "EMPTY_OBJECT"  # type: ignore[index]
    assert stack.read_json("failures/huge.png.json")["error"]["code"] == "TOO_LARGE"  # type: ignore[index]
    assert stack.read_json("results/fine.png.json")["status"] == "finished"  # type: ignore[index]
    assert len(stack.sandbox.jobs()) == 1


def test_event_for_an_uncovered_bucket_starts_nothing(stack: DevStack) -> None:
    stack.upload("inbox/a.png", png_bytes())
    event = stack.s3_event("inbox/a.png")
    event["Records"][0]["s3"]["bucket"]["name"] = "someone-elses-bucket"
    summary = stack.trigger(event)
    assert summary["counts"] == {"skipped": 1}
    assert stack.sandbox.jobs() == []


def test_no_secret_reaches_any_log_line(stack: DevStack, capfd: pytest.CaptureFixture[str],
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    stack.upload("inbox/s.png", png_bytes())
    stack.upload("inbox/t.png", b"corrupt")
    run(stack, "inbox/s.png", "inbox/t.png")
    callback(stack, b'{"event":"job.finished"}', "0" * 64)
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert "submitted" in logged  # the capture did see the bridge's logs
    for secret in (stack.api_key, stack.signing_secret, stack.context_key):
        assert secret not in logged
    assert not re.search(r"X-Amz-(Signature|Security-Token|Credential)=", logged)
    assert "session_token" not in logged and "secret_access_key" not in logged


BAD_RULES = """\
version: 1
rules:
  - name: images
    match: {storage: s3, location: convbridge-demo, prefix: inbox/}
    convert: {to: pdff}
    provider: cloudconvert
    outputs: outbox/
    results: results/
  - name: images
    match: {storage: s3, location: convbridge-demo, prefix: inbox/}
    convert: {to: pdf}
    provider: cloudconvert
    outputs: outbox/
    results: results/
    failures: failures/
"""


def test_a_bad_rules_file_fails_the_cold_start_listing_every_problem() -> None:
    from convbridge.errors import RulesError

    with DevStack(rules_text=BAD_RULES) as stack:
        stack.upload("inbox/a.png", png_bytes())
        with pytest.raises(RulesError) as caught:
            stack.trigger(stack.s3_event("inbox/a.png"))
        message = str(caught.value)
        assert "unknown output format 'pdff'" in message
        assert "failures: required" in message
        assert "duplicate rule name 'images'" in message
        assert stack.sandbox.jobs() == []


def test_a_key_too_long_for_an_sts_policy_is_relayed_through_the_bridge(stack: DevStack) -> None:
    key = "inbox/" + "x" * 1000 + ".png"  # the write policy would pass STS's 2,048 characters
    stack.upload(key, png_bytes())
    run(stack, key)
    record = stack.read_json(f"results/{key.removeprefix('inbox/')}.json")
    assert record is not None and record["status"] == "finished" and record["route"] == "relay"
    output = record["outputs"][0]
    head = stack.s3.head_object(Bucket=stack.bucket, Key=output["key"])
    assert head["ContentLength"] == output["size"] > 0
    assert head["Metadata"]["convbridge-output"] == "images-to-pdf"
    operations = [t["operation"] for t in stack.sandbox.jobs()[0]["tasks"]]
    assert "export/url" in operations and "export/s3" not in operations


def test_metrics_for_the_dashboard_are_emitted(stack: DevStack,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    stack.upload("inbox/m.png", png_bytes())
    stack.upload("inbox/m-bad.png", b"corrupt")
    run(stack, "inbox/m.png", "inbox/m-bad.png")
    out = capfd.readouterr().out
    # log lines from other threads may share a line with a metric: decode each EMF object
    decoder = json.JSONDecoder()
    metrics = [decoder.raw_decode(out, match.start())[0]
               for match in re.finditer(r'\{"_aws"', out)]
    names = {m["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"]: m for m in metrics}
    assert {"JobsSubmitted", "JobsFinished", "JobsFailed", "CallbackLatencyMs"} <= set(names)
    assert names["JobsSubmitted"]["rule"] == "images-to-pdf"
    assert names["JobsFinished"]["provider"] == "cloudconvert"
    assert all(m["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "convbridge" for m in metrics)


def test_sources_differing_only_in_extension_keep_their_own_outputs(stack: DevStack) -> None:
    """``a.png`` and ``a.jpg`` under one rule used to share ``outbox/a.pdf``: the last won."""
    stack.upload("inbox/same/a.png", png_bytes())
    stack.upload("inbox/same/a.jpg", png_bytes(size=(32, 32)))
    run(stack, "inbox/same/a.png", "inbox/same/a.jpg")
    outputs = stack.objects("outbox/same/")
    assert sorted(outputs) == ["outbox/same/a.jpg.pdf", "outbox/same/a.png.pdf"]
    for name in ("a.png", "a.jpg"):
        record = stack.read_json(f"results/same/{name}.json")
        assert record is not None and record["status"] == "finished"
        assert record["outputs"][0]["key"] == f"outbox/same/{name}.pdf"


def test_a_folder_named_like_an_output_is_skipped_with_a_reason(stack: DevStack) -> None:
    stack.upload("inbox/b.png", png_bytes())
    stack.upload("inbox/b.png.pdf/c.png", png_bytes())
    summary = run(stack, "inbox/b.png", "inbox/b.png.pdf/c.png")
    statuses = {o["object"].split("/", 3)[-1]: (o["status"], o["reason"])
                for o in summary["objects"]}
    assert statuses["inbox/b.png"][0] == "submitted"
    status, reason = statuses["inbox/b.png.pdf/c.png"]
    assert status == "skipped" and "named like an output" in reason
    assert list(stack.objects("outbox/")) == ["outbox/b.png.pdf"]
    assert len(stack.sandbox.jobs()) == 1


def test_a_relayed_output_never_overwrites_an_object_it_did_not_make(stack: DevStack) -> None:
    """The wildcard in the key means no STS grant: the output is relayed, create-only."""
    stack.upload("outbox/taken*.png.pdf", b"the user's own file")
    stack.upload("inbox/taken*.png", png_bytes())
    run(stack, "inbox/taken*.png")
    report = stack.read_json("failures/taken*.png.json")
    assert report is not None and report["status"] == "failed"
    assert report["route"] == "relay" and report["error"]["code"] == "OUTPUT_COLLISION"
    body = stack.s3.get_object(Bucket=stack.bucket, Key="outbox/taken*.png.pdf")["Body"].read()
    assert body == b"the user's own file"


def test_a_new_version_of_a_source_replaces_its_own_relayed_output(stack: DevStack) -> None:
    stack.upload("inbox/again*.png", png_bytes())
    run(stack, "inbox/again*.png")
    first = stack.s3.head_object(Bucket=stack.bucket, Key="outbox/again*.png.pdf")
    assert first["Metadata"]["convbridge-source"]
    stack.upload("inbox/again*.png", png_bytes(size=(300, 200)))
    run(stack, "inbox/again*.png")
    record = stack.read_json("results/again*.png.json")
    assert record is not None and record["status"] == "finished" and record["route"] == "relay"
    second = stack.s3.head_object(Bucket=stack.bucket, Key="outbox/again*.png.pdf")
    assert second["ETag"] != first["ETag"]
    assert second["Metadata"]["convbridge-source"] == first["Metadata"]["convbridge-source"]
    assert second["ContentLength"] == record["outputs"][0]["size"]
