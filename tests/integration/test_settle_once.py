"""A context is settled once, by exactly the job the bridge created for it, over real HTTP:
S3 on moto, the sandbox's CloudConvert v1 and Online-Convert dialects, the real trigger and
webhook handlers and the completion queue.

Someone who learned one callback URL (its token is the signed job context) can start a job of
their own on the same service, with the same tag or callback URL, and call the webhook with it
before and after the genuine job settled; a genuine callback can be replayed long after its
settle claim expired. None of this may change the record or the output.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import boto3
import httpx
import pytest

from devstack.harness.base import DEFAULT_RULES
from devstack.sandbox import Faults
from devstack.stack import CLAIMS_TABLE, DevStack
from tests.conftest import png_bytes

SOURCE, RECORD, OUTPUT = "inbox/a/photo.png", "results/a/photo.png.json", "outbox/a/photo.png.pdf"
#: the genuine callback waits this long at the sandbox, so the attacker gets there first
GENUINE_DELAY_SECONDS = 4.0


def rules_for(provider: str) -> str:
    return DEFAULT_RULES.replace("provider: cloudconvert", f"provider: {provider}") % {
        "storage": "s3", "location": "convbridge-demo", "read_grant": "presigned_url"}


@pytest.fixture
def attacker_input() -> Iterator[Path]:
    """A different picture than the user's, so the attacker's output differs from theirs."""
    with tempfile.TemporaryDirectory(prefix="convbridge-attacker-") as folder:
        path = Path(folder) / "other.png"
        path.write_bytes(png_bytes((300, 200)))
        yield path


def submit_delayed(stack: DevStack) -> dict[str, Any]:
    """Submit the user's upload; the provider's genuine callback is held back at the sandbox."""
    stack.sandbox.set_faults(Faults(callback_delay_seconds=GENUINE_DELAY_SECONDS))
    stack.upload(SOURCE, png_bytes())
    summary = stack.trigger(stack.s3_event(SOURCE))
    assert [o["status"] for o in summary["objects"]] == ["submitted"]
    record = stack.read_json(RECORD)
    assert record is not None and record["status"] == "submitted"
    return record


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


def queue_drained(stack: DevStack) -> None:
    """Until the completion queue has settled (or dropped) every queued callback."""
    wait_for(lambda: all(poller.idle() for poller in stack.pollers))


def versioned(stack: DevStack) -> DevStack:
    """The bucket keeps every version, so a rewrite with identical bytes still shows."""
    stack.s3.put_bucket_versioning(Bucket=stack.bucket,
                                   VersioningConfiguration={"Status": "Enabled"})
    return stack


def state(stack: DevStack) -> tuple[dict[str, Any] | None, int, bytes | None, int]:
    """What a user sees: the result record and how often it was written, the output and how
    often it was written."""
    def writes(key: str) -> int:
        listed = stack.s3.list_object_versions(Bucket=stack.bucket, Prefix=key)
        return len([v for v in listed.get("Versions", []) if v["Key"] == key])

    try:
        output = stack.s3.get_object(Bucket=stack.bucket, Key=OUTPUT)["Body"].read()
    except stack.s3.exceptions.NoSuchKey:
        output = None
    return stack.read_json(RECORD), writes(RECORD), output, writes(OUTPUT)


def webhook(stack: DevStack, provider: str, *, query: str, method: str = "POST",
            body: bytes = b"") -> httpx.Response:
    assert stack.webhook is not None
    return httpx.request(method, f"{stack.webhook.url}/callbacks/{provider}?{query}",
                         content=body, headers={"Content-Type": "application/json"})


# ------------------------------------------------------------------------ CloudConvert v1


def v1_attacker_process(stack: DevStack, tag: str, input_url: str) -> dict[str, Any]:
    """A process of the attacker's own on the same service, started with the leaked tag."""
    base = stack.sandbox.url + "/v1"
    created = httpx.post(f"{base}/process", json={
        "apikey": stack.api_key, "inputformat": "png", "outputformat": "pdf"}).json()
    url = "http:" + created["url"]
    started = httpx.post(url, json={"input": "download", "file": input_url,
                                    "outputformat": "pdf", "tag": tag, "save": True})
    assert started.status_code == 200, started.text

    def finished() -> bool:
        return bool(httpx.get(url).json()["step"] == "finished")

    wait_for(finished)
    process: dict[str, Any] = httpx.get(url).json()
    return process


def v1_callback(stack: DevStack, process: dict[str, Any], token: str) -> httpx.Response:
    return webhook(stack, "cloudconvert_v1", method="GET", query=urlencode({
        "token": token, "id": process["id"], "url": process["url"], "step": "finished"}))


def test_v1_a_process_started_with_a_leaked_tag_never_settles_the_context(
        attacker_input: Path) -> None:
    with DevStack(rules_text=rules_for("cloudconvert_v1")) as running:
        stack = versioned(running)
        submitted = submit_delayed(stack)
        genuine = next(p for p in stack.sandbox.provider_jobs("cloudconvert_v1")
                       if p["id"] == submitted["job_id"])
        token = genuine["tag"]
        other_input = stack.sandbox.serve_file(attacker_input, "other.png")

        early = v1_attacker_process(stack, token, other_input)
        v1_callback(stack, early, token)
        queue_drained(stack)
        record, _, output, _ = state(stack)
        assert record is not None and record["status"] == "submitted", record
        assert record["job_id"] == genuine["id"] and output is None

        stack.wait(timeout=30)  # the genuine callback, held back until now
        settled = state(stack)
        record, _, genuine_pdf, _ = settled
        assert record is not None and record["status"] == "finished"
        assert record["job_id"] == genuine["id"]
        assert genuine_pdf is not None and genuine_pdf.startswith(b"%PDF")

        late = v1_attacker_process(stack, token, other_input)
        for process in (early, late):
            v1_callback(stack, process, token)
        queue_drained(stack)
        assert state(stack) == settled


# -------------------------------------------------------------------------- Online-Convert


def oc_attacker_job(stack: DevStack, input_url: str, callback: str) -> dict[str, Any]:
    """A job of the attacker's own, created on the service with the leaked callback URL (the
    service calls it back too, later: the sandbox holds every callback back for a while)."""
    base = stack.sandbox.url + "/onlineconvert/v2"
    headers = {"X-Oc-Api-Key": stack.api_key}
    created = httpx.post(f"{base}/jobs", headers=headers, json={
        "input": [{"type": "remote", "source": input_url}],
        "conversion": [{"target": "pdf"}], "callback": callback}).json()

    def completed() -> bool:
        job = httpx.get(f"{base}/jobs/{created['id']}", headers=headers).json()
        return bool(job["status"]["code"] == "completed")

    wait_for(completed)
    job: dict[str, Any] = httpx.get(f"{base}/jobs/{created['id']}", headers=headers).json()
    return job


def test_onlineconvert_a_job_posted_with_a_leaked_callback_url_never_settles_the_context(
        attacker_input: Path) -> None:
    with DevStack(rules_text=rules_for("onlineconvert")) as running:
        stack = versioned(running)
        submitted = submit_delayed(stack)
        genuine = next(j for j in stack.sandbox.provider_jobs("onlineconvert")
                       if j["id"] == submitted["job_id"])
        leaked = urlsplit(genuine["callback"]).query
        assert parse_qs(leaked)["token"]
        other_input = stack.sandbox.serve_file(attacker_input, "other.png")

        def post(job: dict[str, Any], *, as_ours: bool = False) -> None:
            # the attacker's job, whole, as the service posts it; a body naming our job id
            # instead only makes the bridge read our job, which settles it with what the
            # service says (so, before the genuine settle, it is left out)
            for body in [job] + ([{**job, "id": genuine["id"]}] if as_ours else []):
                webhook(stack, "onlineconvert", query=leaked, body=json.dumps(body).encode())

        early = oc_attacker_job(stack, other_input, genuine["callback"])
        post(early)
        queue_drained(stack)
        record = stack.read_json(RECORD)
        assert record is not None and record["status"] == "submitted", record
        assert record["job_id"] == genuine["id"]

        stack.wait(timeout=30)
        settled = state(stack)
        record, _, output, _ = settled
        assert record is not None and record["status"] == "finished"
        assert record["job_id"] == genuine["id"] and output is not None

        for job in (early, oc_attacker_job(stack, other_input, genuine["callback"])):
            post(job, as_ours=True)
        stack.wait(timeout=30)  # the service's own callbacks for the attacker's jobs too
        assert state(stack) == settled


def test_onlineconvert_a_job_created_held_runs_and_calls_back_only_once_processed(
        attacker_input: Path) -> None:
    """The sandbox follows the seed's jobs built step by step: ``process: false`` holds a job
    (it neither runs nor calls back) until ``PATCH /jobs/{id}`` sends ``process: true``."""
    with DevStack(rules_text=rules_for("onlineconvert")) as stack:
        base = stack.sandbox.url + "/onlineconvert/v2"
        headers = {"X-Oc-Api-Key": stack.api_key}
        source = stack.sandbox.serve_file(attacker_input, "other.png")
        created = httpx.post(f"{base}/jobs", headers=headers, json={
            "input": [{"type": "remote", "source": source}], "conversion": [{"target": "pdf"}],
            "callback": "http://127.0.0.1:9/never", "process": False})
        assert created.status_code == 201 and created.json()["process"] is False
        job_url = f"{base}/jobs/{created.json()['id']}"
        time.sleep(0.5)
        held = httpx.get(job_url, headers=headers).json()
        assert (held["status"]["code"], held["process"]) == ("queued", False)
        receiver = f"{stack.webhook.url if stack.webhook else ''}/callbacks/elsewhere"
        processed = httpx.patch(job_url, headers=headers,
                                json={"process": True, "callback": receiver})
        assert processed.status_code == 200 and processed.json()["process"] is True
        assert httpx.patch(job_url, headers=headers, json={"process": True}).status_code == 200
        stack.sandbox.wait_idle()
        done = httpx.get(job_url, headers=headers).json()
        assert done["status"]["code"] == "completed" and done["callback"] == receiver
        assert [d["job_id"] for d in stack.sandbox.deliveries()] == [done["id"]]
        assert httpx.patch(job_url, headers=headers, json={"process": "yes"}).status_code == 400


# ------------------------------------------------------------------- replays, claims expired


def forget_claims() -> None:
    """What DynamoDB's TTL does to claims older than CONVBRIDGE_CLAIM_EXPIRY_SECONDS."""
    table = boto3.resource("dynamodb").Table(CLAIMS_TABLE)
    for item in table.scan()["Items"]:
        table.delete_item(Key={"id": item["id"]})
    assert not table.scan()["Items"]


@pytest.mark.parametrize("provider", ["cloudconvert_v1", "onlineconvert"])
def test_a_genuine_callback_replayed_after_its_claim_expired_changes_nothing(
        provider: str) -> None:
    with DevStack(rules_text=rules_for(provider)) as running:
        stack = versioned(running)
        stack.upload(SOURCE, png_bytes())
        stack.trigger(stack.s3_event(SOURCE))
        stack.wait(timeout=30)
        settled = state(stack)
        assert settled[0] is not None and settled[0]["status"] == "finished"
        job = next(j for j in stack.sandbox.provider_jobs(provider)
                   if j["id"] == settled[0]["job_id"])
        forget_claims()
        if provider == "cloudconvert_v1":
            answer = v1_callback(stack, job, job["tag"])
        else:
            answer = webhook(stack, provider, query=urlsplit(job["callback"]).query,
                             body=json.dumps(job).encode())
        assert answer.status_code in (200, 202), answer.text
        queue_drained(stack)
        assert state(stack) == settled
