"""AWS calls the S3 trigger makes for one upload, counted by botocore event hooks on every
client the bridge makes (as ``bench.aws_calls`` does), against the dev stack: moto for S3,
STS and DynamoDB, the sandbox's CloudConvert. A first upload makes at most three (the claim,
the scoped write grant, the record); the job is made once and its record names it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench.aws_calls import CallCounter, counted_clients
from bench.submit import _sqs_batch
from devstack.lambda_local import LocalContext
from devstack.sandbox import Faults
from devstack.stack import DevStack
from tests.conftest import png_bytes


@pytest.fixture
def counted() -> Iterator[tuple[DevStack, CallCounter]]:
    counter = CallCounter()
    # callbacks dropped: the webhook shares the process and its clients, and is not counted
    with counted_clients(counter), DevStack(faults=Faults(drop_callbacks=True)) as stack:
        stack.upload("inbox/warm.png", png_bytes())
        # the first event builds the bridge and reads its secrets, once per environment
        assert stack.invoke_trigger(_sqs_batch(stack, ["inbox/warm.png"])) == {
            "batchItemFailures": []}
        stack.sandbox.wait_idle(timeout=30)
        yield stack, counter


def calls_for(stack: DevStack, counter: CallCounter, key: str) -> dict[str, int]:
    counter.calls.clear()
    counter.counting = True
    try:
        answer = stack.invoke_trigger(_sqs_batch(stack, [key]), LocalContext(timeout_seconds=60))
    finally:
        counter.counting = False
    assert answer == {"batchItemFailures": []}
    stack.sandbox.wait_idle(timeout=30)
    return dict(counter.calls)


def test_a_first_upload_costs_at_most_three_aws_calls(
        counted: tuple[DevStack, CallCounter]) -> None:
    stack, counter = counted
    stack.upload("inbox/first.png", png_bytes())
    calls = calls_for(stack, counter, "inbox/first.png")
    assert sum(calls.values()) <= 3, calls
    record = stack.read_json("results/first.png.json")
    assert record is not None and record["status"] == "submitted" and record["job_id"]
    assert stack.sandbox.job_count() == 2  # the warm-up's and this one


def test_a_reupload_replaces_the_older_record_and_a_duplicate_makes_no_job(
        counted: tuple[DevStack, CallCounter]) -> None:
    stack, counter = counted
    stack.upload("inbox/again.png", png_bytes())
    calls_for(stack, counter, "inbox/again.png")
    first = stack.read_json("results/again.png.json")
    stack.upload("inbox/again.png", png_bytes((30, 20)))  # a new version of the key
    reupload = calls_for(stack, counter, "inbox/again.png")
    # the create-only write meets the older record: read, then replaced at its revision
    assert sum(reupload.values()) <= 5, reupload
    newer = stack.read_json("results/again.png.json")
    assert first is not None and newer is not None
    assert newer["job_id"] != first["job_id"] and newer["status"] == "submitted"
    duplicate = calls_for(stack, counter, "inbox/again.png")
    assert sum(duplicate.values()) <= 3, duplicate  # the grant, the refused claim, the record
    assert stack.read_json("results/again.png.json") == newer
    assert stack.sandbox.job_count() == 3
