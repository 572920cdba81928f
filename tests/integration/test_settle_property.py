"""Invariant "settled once, by the job we made", as a Hypothesis property over real moto S3
(versioned, so every rewrite of a record shows) and the real claims table on moto DynamoDB.

For generated sequences of callbacks to one job context (the genuine job, finished or failed
in any order, replayed; jobs of someone else carrying the same token; the claims table
forgetting everything in between, as its TTL does) the result record is written final at most
once and always names the job the bridge created. Both kinds of dialect are covered: one that
records its job before the job can run (CloudConvert v1), and one whose signed callback may
come before the create answer was recorded (CloudConvert v2, where the late ``submitted``
write, create-only, comes at a generated point and must never overwrite the settled record).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convbridge.bridge import Bridge
from convbridge.context import JobContext, ordered_nonce
from convbridge.errors import CallbackSignatureError
from convbridge.model import JobOutcome, ObjectRef
from convbridge.pipeline import Accepted, settle
from convbridge.pipeline.submit import _write_submitted
from devstack.lambda_local import LocalContext
from devstack.stack import CLAIMS_TABLE, DevStack

RULES = """\
version: 1
rules:
  - name: held
    match: {storage: s3, location: convbridge-demo, prefix: held/}
    convert: {to: pdf}
    provider: cloudconvert_v1
    outputs: held-out/
    results: held-results/
    failures: held-failures/
  - name: direct
    match: {storage: s3, location: convbridge-demo, prefix: direct/}
    convert: {to: pdf}
    provider: cloudconvert
    outputs: direct-out/
    results: direct-results/
    failures: direct-failures/
"""
GENUINE = "genuine-job"
FINAL = {"finished", "failed"}
_keys = itertools.count()

Event = tuple[str, str]  # ("genuine", status) | ("foreign", job id) | ("expire", "")
events = st.lists(st.one_of(
    st.tuples(st.just("genuine"), st.sampled_from(["finished", "failed"])),
    st.tuples(st.just("foreign"), st.sampled_from(["other-1", "other-2"])),
    st.tuples(st.just("expire"), st.just("")),
), max_size=8)


@pytest.fixture(scope="module")
def stack() -> Iterator[DevStack]:
    with DevStack(rules_text=RULES) as running:
        running.s3.put_bucket_versioning(Bucket=running.bucket,
                                         VersioningConfiguration={"Status": "Enabled"})
        yield running


@pytest.fixture(scope="module")
def bridge(stack: DevStack) -> Bridge:
    from convbridge import runtime

    current = runtime.bridge()
    current.claims.register_lambda_context(LocalContext(timeout_seconds=900))
    return current


def forget_claims() -> None:
    table = boto3.resource("dynamodb").Table(CLAIMS_TABLE)
    for item in table.scan()["Items"]:
        table.delete_item(Key={"id": item["id"]})


def final_versions(stack: DevStack, key: str) -> list[dict[str, Any]]:
    """Every version of ``key`` ever written with a final status, oldest first."""
    listed = stack.s3.list_object_versions(Bucket=stack.bucket, Prefix=key).get("Versions", [])
    found = []
    for version in sorted((v for v in listed if v["Key"] == key),
                          key=lambda v: v["LastModified"]):
        body = stack.s3.get_object(Bucket=stack.bucket, Key=key,
                                   VersionId=version["VersionId"])["Body"].read()
        document = json.loads(body)
        if document.get("status") in FINAL:
            found.append(document)
    return found


def two_submissions(rule: Any, bucket: str, key: str) -> tuple[JobContext, JobContext]:
    """Contexts of two uploads of ``key``, v1 submitted a nanosecond before v2."""
    issued_ns = time.time_ns()
    return tuple(  # type: ignore[return-value]
        JobContext(rule=rule.name, storage="s3", location=bucket, key=key, version=version,
                   output_key=rule.output_key(key), route="native",
                   issued_at=(issued_ns + n) // 10**9, nonce=ordered_nonce(issued_ns + n))
        for n, version in enumerate(("v1", "v2")))


@settings(max_examples=30, deadline=None)  # 30 sequences of up to 8 callbacks: ~12 s
@given(rule_name=st.sampled_from(["held", "direct"]), sequence=events,
       bind_at=st.integers(min_value=0, max_value=8))
def test_a_context_is_settled_once_by_the_job_the_bridge_created(
        stack: DevStack, bridge: Bridge, rule_name: str, sequence: list[Event],
        bind_at: int) -> None:
    rule = bridge.rules.get(rule_name)
    assert rule is not None
    storage = bridge.storage("s3")
    key = f"{rule_name}/{next(_keys)}.png"
    ref = ObjectRef("s3", stack.bucket, key, version="v1", size=10)
    context = JobContext.new(rule=rule.name, storage="s3", location=stack.bucket, key=key,
                             version="v1", output_key=rule.output_key(key), route="native")
    # the provider wrote the output itself (native route), as it would before calling back
    storage.put_bytes(stack.bucket, context.output_key, b"%PDF-1.4 converted",
                      content_type="application/pdf", metadata={})
    before_start = bridge.provider(rule.provider).binds_before_start
    assert before_start == (rule_name == "held")
    steps: list[Event] = list(sequence)
    if before_start:
        assert _write_submitted(storage, ref, rule, context, GENUINE) == "written"
    else:
        # a signed dialect's job may call back before its create answer is recorded; only
        # the bridge's own job can sign with our secret and carry our token, so jobs of
        # someone else appear here only once the job is recorded
        bind_at = min(bind_at, len(steps))
        steps = [e for e in steps[:bind_at] if e[0] != "foreign"] + [("bind", "")] + steps[
            bind_at:]

    first_genuine: str | None = None
    for kind, value in steps:
        if kind == "bind":
            _write_submitted(storage, ref, rule, context, GENUINE)
        elif kind == "expire":
            forget_claims()
        else:
            job_id = GENUINE if kind == "genuine" else value
            status = value if kind == "genuine" else "finished"
            outcome = JobOutcome(provider=rule.provider, job_id=job_id,
                                 status=status,  # type: ignore[arg-type]
                                 event=status)
            accepted = Accepted(outcome, context, rule)
            if kind == "foreign":
                with pytest.raises(CallbackSignatureError):
                    settle(bridge, accepted)
            else:
                first_genuine = first_genuine or status
                completion = settle(bridge, accepted)
                assert completion.status in {"recorded", "duplicate"}
        shown = stack.read_json(rule.result_key(key))
        if shown is None:  # nothing is recorded before the job exists
            assert kind in {"expire"} and not before_start
            continue
        assert shown["context_nonce"] == context.nonce
        assert shown["job_id"] in (None, GENUINE)
        if shown["status"] in FINAL:
            assert shown["job_id"] == GENUINE

    written = final_versions(stack, rule.result_key(key))
    assert len(written) == (1 if first_genuine else 0)
    if first_genuine:
        assert written[0]["job_id"] == GENUINE and written[0]["status"] == first_genuine
        assert stack.read_json(rule.result_key(key)) == written[0]
        reports = final_versions(stack, rule.failure_key(key))
        assert len(reports) == (1 if first_genuine == "failed" else 0)


@pytest.mark.parametrize("rule_name", ["held", "direct"])
def test_a_job_whose_record_a_newer_submission_took_changes_nothing(
        stack: DevStack, bridge: Bridge, rule_name: str) -> None:
    """Two uploads of one key in quick succession: the older job's callback, however late,
    must not replace the newer submission's record, and a job not started yet never starts."""
    rule = bridge.rules.get(rule_name)
    assert rule is not None
    storage = bridge.storage("s3")
    key = f"{rule_name}/{next(_keys)}.png"
    contexts = two_submissions(rule, stack.bucket, key)
    storage.put_bytes(stack.bucket, rule.output_key(key), b"%PDF-1.4 converted",
                      content_type="application/pdf", metadata={})
    older, newer = (ObjectRef("s3", stack.bucket, key, version=v) for v in ("v1", "v2"))
    assert _write_submitted(storage, newer, rule, contexts[1], "newer-job") == "written"
    # the older job was not started: it never will be (submit raises StaleWrite on this)
    assert _write_submitted(storage, older, rule, contexts[0], "older-job") == "newer"
    taken = stack.read_json(rule.result_key(key))
    assert taken is not None and taken["job_id"] == "newer-job"

    late = Accepted(JobOutcome(provider=rule.provider, job_id="older-job", status="finished"),
                    contexts[0], rule)
    assert settle(bridge, late).status == "ignored"
    assert stack.read_json(rule.result_key(key)) == taken
    settled = settle(bridge, Accepted(JobOutcome(provider=rule.provider, job_id="newer-job",
                                                 status="finished"), contexts[1], rule))
    assert settled.status == "recorded"
    assert settle(bridge, late).status == "ignored"
    shown = stack.read_json(rule.result_key(key))
    assert shown is not None and (shown["status"], shown["job_id"]) == ("finished", "newer-job")


def test_a_newer_submission_made_while_an_older_job_settles_keeps_its_record(
        stack: DevStack, bridge: Bridge, monkeypatch: pytest.MonkeyPatch) -> None:
    """The source is uploaded and submitted again while the older job's outputs are being
    collected (a relay can take minutes): the older job must leave the newer record alone, so
    the newer job still gets recorded before it starts and settles."""
    rule = bridge.rules.get("held")
    assert rule is not None
    storage = bridge.storage("s3")
    key = f"held/{next(_keys)}.png"
    older_context, newer_context = two_submissions(rule, stack.bucket, key)
    storage.put_bytes(stack.bucket, rule.output_key(key), b"%PDF-1.4 converted",
                      content_type="application/pdf", metadata={})
    older, newer = (ObjectRef("s3", stack.bucket, key, version=v) for v in ("v1", "v2"))
    assert _write_submitted(storage, older, rule, older_context, "older-job") == "written"
    real_stat = storage.stat

    def stat_while_resubmitted(location: str, looked_up: str) -> ObjectRef | None:
        if looked_up == rule.output_key(key):  # the older job's outputs are being collected
            assert _write_submitted(storage, newer, rule, newer_context, "newer-job") == (
                "written")
        return real_stat(location, looked_up)

    monkeypatch.setattr(storage, "stat", stat_while_resubmitted)
    settled = settle(bridge, Accepted(JobOutcome(provider=rule.provider, job_id="older-job",
                                                 status="finished"), older_context, rule))
    monkeypatch.undo()
    assert settled.status == "ignored"
    shown = stack.read_json(rule.result_key(key))
    assert shown is not None
    assert (shown["status"], shown["job_id"], shown["context_nonce"]) == (
        "submitted", "newer-job", newer_context.nonce)
