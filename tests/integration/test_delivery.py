"""At-least-once delivery made safe: duplicate and concurrent events, throttling provider,
loop guard, partial batch failures, replayed and out-of-order callbacks, failure policies.
All over real HTTP against moto (S3, SQS, DynamoDB, Secrets Manager) and the sandbox."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from devstack.lambda_local import LocalContext
from devstack.sandbox import Faults
from devstack.stack import DevStack
from tests.conftest import png_bytes

PNG = png_bytes((16, 16))


def sqs_event(*bodies: str, receive_count: int = 1) -> dict[str, Any]:
    return {"Records": [{
        "messageId": f"m-{index}", "receiptHandle": f"r-{index}", "body": body,
        "attributes": {"ApproximateReceiveCount": str(receive_count),
                       "SentTimestamp": "1700000000000"},
        "messageAttributes": {}, "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q",
        "awsRegion": "us-east-1"} for index, body in enumerate(bodies)]}


def results(stack: DevStack) -> dict[str, dict[str, Any]]:
    return {key: stack.read_json(key) or {} for key in stack.objects("results/")}


def test_300_events_for_200_uploads_start_exactly_200_jobs(stack: DevStack) -> None:
    keys = [f"inbox/batch/{n:03d}.png" for n in range(200)]
    events = []
    for key in keys:
        stack.upload(key, PNG)
        events.append(stack.s3_event(key))
    deliveries = events + random.Random(7).sample(events, 100)
    random.Random(8).shuffle(deliveries)

    def deliver(event: dict[str, Any]) -> list[str]:
        return [o["status"] for o in stack.trigger(event)["objects"]]

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = [s for batch in pool.map(deliver, deliveries) for s in batch]
    # a duplicate that arrived while its twin held the claim is delivered again, as SQS would
    redelivered = [e for e, s in zip(deliveries, statuses, strict=True) if s == "retry"]
    stack.wait(timeout=120)
    for event in redelivered:
        assert deliver(event) == ["duplicate"]
    assert statuses.count("submitted") == 200
    assert statuses.count("duplicate") + len(redelivered) == 100
    stack.wait(timeout=120)
    assert stack.sandbox.job_count() == 200
    records = results(stack)
    assert len(records) == 200
    assert {r["status"] for r in records.values()} == {"finished"}
    assert len({r["job_id"] for r in records.values()}) == 200


def test_a_throttling_flaky_provider_still_gets_every_upload_exactly_one_job() -> None:
    faults = Faults(fail_rate_429=0.15, fail_rate_503=0.15, retry_after_seconds=1,
                    timeout_rate=0.1, timeout_seconds=2.0, seed=11)
    with DevStack(faults=faults, env={"CONVBRIDGE_HTTP_TIMEOUT_SECONDS": "1"}) as stack:
        keys = [f"inbox/flaky/{n:02d}.png" for n in range(20)]
        for key in keys:
            stack.upload(key, PNG)
        for key in keys:  # one at a time, so the request log shows each client's waits
            stack.trigger(stack.s3_event(key))
        stack.wait(timeout=120)
        log = [r for r in stack.sandbox.requests() if r["path"].startswith("/v2/jobs")]
        refused = [i for i, r in enumerate(log) if r["status"] in (429, 503)]
        timeouts = [r for r in log if r["status"] == "timeout"]
        assert refused and timeouts, "the fault knobs did not fire; the test proves nothing"
        for index in refused:
            if index + 1 < len(log):
                waited = log[index + 1]["time"] - log[index]["time"]
                assert waited >= float(log[index]["retry_after"]) - 0.05
        assert stack.sandbox.job_count() == 20
        for key in keys:
            name = key.removeprefix("inbox/")
            record = stack.read_json(f"results/{name}.json")
            assert record is not None and record["status"] in {"finished", "failed"}
            if record["status"] == "failed":
                assert stack.read_json(f"failures/{name}.json") is not None


LOOP_RULES = """\
version: 1
rules:
  - name: everything
    match: {storage: s3, location: convbridge-demo, prefix: '', suffixes: [.png, .jpg, .json]}
    convert: {to: jpg}
    provider: cloudconvert
    outputs: converted/
    results: results/
    failures: failures/
"""


def test_the_bridges_own_writes_in_a_watched_prefix_start_no_jobs() -> None:
    with DevStack(rules_text=LOOP_RULES) as stack:
        stack.watch_bucket(prefix="")
        for n in range(3):
            stack.upload(f"photos/{n}.png", PNG)
        stack.wait(timeout=60)
        assert stack.sandbox.job_count() == 3
        written = stack.objects("converted/")
        assert len(written) == 3 and len(stack.objects("results/")) == 3
        # a user copying an output elsewhere keeps its marker: still not a new job
        stack.s3.copy_object(Bucket=stack.bucket, Key="photos/copied.jpg",
                             CopySource={"Bucket": stack.bucket, "Key": next(iter(written))})
        stack.wait(timeout=60)
        assert stack.sandbox.job_count() == 3
        assert stack.read_json("results/photos/copied.jpg.json") is None


TWO_RULES = """\
version: 1
rules:
  - name: images-to-pdf
    match: {storage: s3, location: convbridge-demo, prefix: inbox/}
    convert: {to: pdf}
    provider: cloudconvert
    outputs: outbox/
    results: results/
    failures: failures/
  - name: docs
    match: {storage: s3, location: convbridge-demo, prefix: docs/}
    convert: {to: pdf}
    provider: freeconvert
    outputs: docs-out/
    results: docs-results/
    failures: docs-failures/
"""


def test_one_failing_message_is_redelivered_without_the_good_ones() -> None:
    # an empty secret name leaves FreeConvert unconfigured: its message keeps failing
    with DevStack(rules_text=TWO_RULES, env={"CONVBRIDGE_SECRET_FREECONVERT": ""}) as stack:
        stack.upload("inbox/good.png", PNG)
        stack.upload("docs/stuck.png", PNG)
        event = sqs_event(json.dumps(stack.s3_event("inbox/good.png")),
                          json.dumps(stack.s3_event("docs/stuck.png")),
                          json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent",
                                      "Bucket": stack.bucket}),
                          "this is not json")
        answer = stack.trigger(event)
        assert answer == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}
        stack.wait()
        assert stack.sandbox.job_count() == 1
        # SQS redelivers the whole batch only if the function crashed; a redelivered good
        # message is still one job
        stack.trigger(sqs_event(json.dumps(stack.s3_event("inbox/good.png"))))
        stack.wait()
        assert stack.sandbox.job_count() == 1


def test_the_last_delivery_reports_an_unavailable_provider_instead_of_retrying() -> None:
    with DevStack(faults=Faults(fail_rate_503=1.0, retry_after_seconds=1)) as stack:
        stack.upload("inbox/late.png", PNG)
        body = json.dumps(stack.s3_event("inbox/late.png"))
        trigger = stack.trigger_module.handler
        first = trigger(sqs_event(body), LocalContext(timeout_seconds=4))
        assert first == {"batchItemFailures": [{"itemIdentifier": "m-0"}]}
        assert stack.read_json("failures/late.png.json") is None
        last = trigger(sqs_event(body, receive_count=5), LocalContext(timeout_seconds=4))
        assert last == {"batchItemFailures": []}
        report = stack.read_json("failures/late.png.json")
        assert report is not None and report["error"]["code"] == "PROVIDER_UNAVAILABLE"
        assert stack.sandbox.job_count() == 0


def signed_callback(stack: DevStack, event: str, job: dict[str, Any]) -> httpx.Response:
    body = json.dumps({"event": event, "job": job}).encode()
    signature = hmac.new(stack.signing_secret.encode(), body, hashlib.sha256).hexdigest()
    assert stack.webhook is not None
    return httpx.post(f"{stack.webhook.url}/callbacks/cloudconvert", content=body,
                      headers={"CloudConvert-Signature": signature,
                               "Content-Type": "application/json"})


def test_replayed_and_out_of_order_callbacks_change_nothing(stack: DevStack) -> None:
    stack.upload("inbox/once.png", PNG)
    stack.trigger(stack.s3_event("inbox/once.png"))
    stack.wait()
    head = stack.s3.head_object(Bucket=stack.bucket, Key="results/once.png.json")
    record = stack.read_json("results/once.png.json")
    assert record is not None and record["status"] == "finished"
    job = stack.sandbox.jobs()[0]
    job["tag"] = next(t for t in [job.get("tag")] if t)
    for _ in range(5):
        assert signed_callback(stack, "job.finished", job).status_code == 202
    failed = dict(job, status="error", tasks=[dict(t, status="error", code="LATE",
                                                   message="late failure")
                                              for t in job["tasks"]])
    assert signed_callback(stack, "job.failed", failed).status_code == 202
    stack.wait()
    after = stack.s3.head_object(Bucket=stack.bucket, Key="results/once.png.json")
    assert after["ETag"] == head["ETag"] and after["LastModified"] == head["LastModified"]
    assert stack.read_json("failures/once.png.json") is None
    assert list(stack.objects("outbox/")) == ["outbox/once.png.pdf"]


MOVE_RULES = """\
version: 1
rules:
  - name: images-to-pdf
    match: {storage: s3, location: convbridge-demo, prefix: inbox/, suffixes: [.png]}
    convert: {to: pdf}
    provider: cloudconvert
    outputs: outbox/
    results: results/
    failures: failures/
    on_failure: %s
"""


@pytest.mark.parametrize("policy", ["move", "copy"])
def test_failure_policy_moves_or_copies_the_source(policy: str) -> None:
    with DevStack(rules_text=MOVE_RULES % policy) as stack:
        stack.upload("inbox/bad/scan.png", b"not a png")
        stack.trigger(stack.s3_event("inbox/bad/scan.png"))
        stack.wait()
        assert stack.read_json("failures/bad/scan.png.json")["status"] == "failed"  # type: ignore[index]
        assert stack.objects("failures/bad/")["failures/bad/scan.png"] == 9
        assert ("inbox/bad/scan.png" in stack.objects("inbox/")) == (policy == "copy")


def test_retry_resubmits_the_sources_named_in_failure_reports(capsys) -> None:  # type: ignore[no-untyped-def]
    from convbridge import cli

    with DevStack(rules_text=MOVE_RULES % "move") as stack:
        stack.upload("inbox/fixme.png", b"broken upload")
        stack.trigger(stack.s3_event("inbox/fixme.png"))
        stack.wait()
        assert stack.read_json("failures/fixme.png.json") is not None
        # the partner sends a good file; the user fixes the moved copy and asks for a retry
        stack.upload("failures/fixme.png", PNG)
        assert cli.main(["retry"]) == 0
        stack.wait()
        out = capsys.readouterr().out
        assert "inbox/fixme.png" in out and "submitted" in out
        record = stack.read_json("results/fixme.png.json")
        assert record is not None and record["status"] == "finished"
        assert stack.read_json("failures/fixme.png.json") is None
        assert "outbox/fixme.png.pdf" in stack.objects("outbox/")
        assert cli.main(["retry"]) == 0
        assert "nothing to retry" in capsys.readouterr().out
