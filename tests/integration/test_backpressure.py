"""A burst against a provider that caps concurrent jobs and requests per second: events wait
in the queue (deferred with backoff) instead of failing, and every upload is converted once.
Over real HTTP and the local SQS loop on moto (receive counts, delays, redrive)."""

from __future__ import annotations

import json
import time
from typing import Any

import boto3

from devstack.sandbox import Faults
from devstack.stack import DevStack
from tests.conftest import png_bytes

PNG = png_bytes((8, 8))
UPLOADS = 200


def _finished(stack: DevStack) -> dict[str, dict[str, Any]]:
    records = {key: stack.read_json(key) or {} for key in stack.objects("results/")}
    return {key: r for key, r in records.items() if r.get("status") == "finished"}


def test_a_burst_over_the_providers_limits_waits_and_every_upload_is_converted_once() -> None:
    faults = Faults(max_concurrent_jobs=5, max_requests_per_second=10, retry_after_seconds=1)
    env = {"CONVBRIDGE_CLOUDCONVERT_MAX_CONCURRENT_JOBS": "5",
           "CONVBRIDGE_CLOUDCONVERT_REQUESTS_PER_SECOND": "10",
           "CONVBRIDGE_BACKPRESSURE_BASE_SECONDS": "1",
           "CONVBRIDGE_BACKPRESSURE_MAX_SECONDS": "3"}
    with DevStack(faults=faults, env=env) as stack:
        sqs = boto3.client("sqs", region_name="us-east-1")
        dlq_url = sqs.create_queue(QueueName="convbridge-s3-events-dlq")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]
        events_url = stack.harness.events_queue_url  # type: ignore[attr-defined]
        sqs.set_queue_attributes(QueueUrl=events_url, Attributes={"RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})})
        stack.watch_bucket()
        started = time.monotonic()
        for n in range(UPLOADS):
            stack.upload(f"inbox/burst/{n:03d}.png", PNG)
        # a guard against a hang, not a speed check (bench/ measures the drain time): the
        # burst needs about a minute on two idle cores
        deadline = started + 240
        while len(_finished(stack)) < UPLOADS and time.monotonic() < deadline:
            time.sleep(0.5)
        finished = _finished(stack)
        creates = [r for r in stack.sandbox.requests()
                   if r["method"] == "POST" and r["path"] == "/v2/jobs"]
        refused = [r for r in creates if r["status"] in (402, 429)]

        assert len(finished) == UPLOADS, f"{len(finished)} of {UPLOADS} converted in 240 s"
        assert stack.objects("failures/") == {}
        assert len(stack.objects("outbox/")) == UPLOADS
        assert stack.sandbox.job_count() == UPLOADS  # no duplicate jobs
        assert len({r["job_id"] for r in finished.values()}) == UPLOADS
        # the provider's limits were met, and answered by waiting, not by failing
        assert refused, "the burst never reached the sandbox's limits"
        dlq = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]
        assert int(dlq["ApproximateNumberOfMessages"]) == 0
        assert int(dlq["ApproximateNumberOfMessagesNotVisible"]) == 0
