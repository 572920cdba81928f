"""submit, accept and settle through every branch, over the in-memory storage, provider and
claims of convbridge.testing: what each leaves in storage is what a user would find there."""

from __future__ import annotations

import base64
import hmac
import json
from dataclasses import asdict, replace
from hashlib import sha256
from typing import Any

import pytest

from convbridge.bridge import Bridge
from convbridge.context import JobContext, verify_context
from convbridge.errors import (
    CallbackSignatureError,
    ContextError,
    ProviderRejected,
    ProviderUnavailable,
)
from convbridge.model import Grant, JobSpec, ObjectRef
from convbridge.pipeline import accept, complete, settle, submit, submit_all
from convbridge.testing import MemoryClaims, MemoryStorage, ScriptedProvider, memory_bridge
from tests.memory_rules import PNG_TO_PDF

BUCKET = "bucket"
RULES = PNG_TO_PDF + "    max_size_bytes: 100\n"


@pytest.fixture
def storage() -> MemoryStorage:
    return MemoryStorage()


@pytest.fixture
def provider() -> ScriptedProvider:
    return ScriptedProvider()


@pytest.fixture
def bridge(storage: MemoryStorage, provider: ScriptedProvider) -> Bridge:
    return memory_bridge(RULES, storage=storage, provider=provider)


def upload(storage: MemoryStorage, key: str, data: bytes = b"\x89PNG image") -> ObjectRef:
    return storage.put(BUCKET, key, data)


def record(storage: MemoryStorage, key: str) -> dict[str, Any]:
    document: dict[str, Any] = storage.json(BUCKET, key)
    return document


# ----------------------------------------------------------------------------- submit


@pytest.mark.parametrize(("key", "reason"), [
    ("outbox/a.png", "written by convbridge itself (loop guard)"),
    ("inbox/../a.png", "key refused"),
    ("elsewhere/a.png", "no rule covers this location and prefix"),
    ("inbox/a.txt", "rule 'png-to-pdf' does not convert this suffix"),
])
def test_objects_no_rule_converts_are_skipped_and_nothing_is_written(
        bridge: Bridge, storage: MemoryStorage, provider: ScriptedProvider, key: str,
        reason: str) -> None:
    submission = submit(bridge, upload(storage, key))
    assert submission.status == "skipped"
    assert submission.reason.startswith(reason)
    assert storage.keys(BUCKET) == {key}
    assert provider.jobs == {}


@pytest.mark.parametrize(("data", "code"), [(b"", "EMPTY_OBJECT"), (b"x" * 101, "TOO_LARGE")])
def test_empty_or_too_large_sources_get_a_failure_report(
        bridge: Bridge, storage: MemoryStorage, provider: ScriptedProvider, data: bytes,
        code: str) -> None:
    submission = submit(bridge, upload(storage, "inbox/a.png", data))
    assert submission.status == "rejected"
    report = record(storage, "failures/a.png.json")
    assert report["status"] == "rejected"
    assert report["error"]["code"] == code
    assert record(storage, "results/a.png.json") == report
    assert provider.jobs == {}


def test_a_submitted_job_is_recorded_with_its_source_and_context(
        bridge: Bridge, storage: MemoryStorage, provider: ScriptedProvider) -> None:
    ref = upload(storage, "inbox/a.png")
    submission = submit(bridge, ref)
    assert (submission.status, submission.job_id) == ("submitted", "job-1")
    result = record(storage, "results/a.png.json")
    assert result["status"] == "submitted"
    assert result["job_id"] == "job-1"
    assert result["route"] == "relay"
    assert result["source"] == {"storage": "s3", "location": BUCKET, "key": "inbox/a.png",
                                "version": ref.version, "size": ref.size}
    assert result["context_nonce"]


def test_a_duplicate_delivery_starts_no_second_job(
        bridge: Bridge, storage: MemoryStorage, provider: ScriptedProvider) -> None:
    ref = upload(storage, "inbox/a.png")
    submit(bridge, ref)
    again = submit(bridge, ref)
    assert (again.status, again.reason, again.job_id) == ("duplicate", "already submitted",
                                                          "job-1")
    assert list(provider.jobs) == ["job-1"]


def test_a_job_the_provider_refuses_gets_a_failure_report_with_its_code(
        storage: MemoryStorage) -> None:
    provider = ScriptedProvider(script=[ProviderRejected("bad input", status=422,
                                                         code="INVALID_FILE")])
    bridge = memory_bridge(RULES, storage=storage, provider=provider)
    submission = submit(bridge, upload(storage, "inbox/a.png"))
    assert submission.status == "rejected"
    assert record(storage, "failures/a.png.json")["error"]["code"] == "INVALID_FILE"


class _UnsignableStorage(MemoryStorage):
    """A storage that cannot sign a URL (as SFTP): the bridge would have to push the input."""

    relay_read_kind = "upload"

    def grant_read(self, ref: ObjectRef, ttl_seconds: int, *, kind: str = "presigned_url"
                   ) -> Grant:
        return replace(super().grant_read(ref, ttl_seconds), kind="upload", url=None)


def test_an_input_only_an_upload_could_deliver_to_a_provider_taking_none_is_reported() -> None:
    storage, provider = _UnsignableStorage(), ScriptedProvider()
    bridge = memory_bridge(RULES, storage=storage, provider=provider)
    submission = submit(bridge, upload(storage, "inbox/a.png"))
    assert submission.status == "rejected"
    report = record(storage, "failures/a.png.json")
    assert report["error"] == {"code": "UPLOAD_UNSUPPORTED", "task": None,
                               "message": "cloudconvert takes no input uploaded by the bridge"}
    assert provider.jobs == {}


def test_an_unavailable_provider_is_reported_on_the_final_delivery(
        storage: MemoryStorage) -> None:
    provider = ScriptedProvider(script=[ProviderUnavailable("503 three times", status=503)])
    bridge = memory_bridge(RULES, storage=storage, provider=provider)
    submission = submit(bridge, upload(storage, "inbox/a.png"), final_attempt=True)
    assert submission.status == "rejected"
    assert record(storage, "failures/a.png.json")["error"]["code"] == "PROVIDER_UNAVAILABLE"


def test_an_unavailable_provider_before_the_final_delivery_leaves_it_to_the_next(
        storage: MemoryStorage) -> None:
    provider = ScriptedProvider(script=[ProviderUnavailable("503 three times", status=503)])
    bridge = memory_bridge(RULES, storage=storage, provider=provider)
    ref = upload(storage, "inbox/a.png")
    [first] = submit_all(bridge, [ref], final_attempt=False)
    assert first.status == "retry"
    assert "failures/a.png.json" not in storage.keys(BUCKET)
    # the claim was released: the next delivery starts the job
    [second] = submit_all(bridge, [ref], final_attempt=False)
    assert (second.status, second.job_id) == ("submitted", "job-1")


def test_a_record_taken_over_before_the_job_starts_keeps_it_from_starting(
        storage: MemoryStorage) -> None:
    """The key is uploaded and submitted again while the older job is being created: the
    older job, not started yet, never starts, and the newer record stays."""

    class BindsFirst(ScriptedProvider):
        binds_before_start = True

    def newer_submission(spec: JobSpec) -> None:
        if spec.source.version == first.version:
            newer = submit(bridge, upload(storage, "inbox/a.png", b"\x89PNG newer"))
            assert newer.status == "submitted"

    bridge = memory_bridge(RULES, storage=storage, provider=BindsFirst(on_create=newer_submission))
    first = upload(storage, "inbox/a.png")
    submission = submit(bridge, first)
    assert submission.status == "skipped"
    assert submission.reason == "the result record changed before the job could start"
    shown = record(storage, "results/a.png.json")
    assert (shown["status"], shown["job_id"]) == ("submitted", "job-2")
    assert shown["source"]["version"] != first.version


# --------------------------------------------------------------------- accept and settle


def submitted(bridge: Bridge, storage: MemoryStorage, key: str = "inbox/a.png") -> str:
    submission = submit(bridge, upload(storage, key))
    assert submission.job_id is not None
    return submission.job_id


def test_a_finished_job_is_relayed_and_recorded_with_the_source_it_was_made_from(
        bridge: Bridge, storage: MemoryStorage, provider: ScriptedProvider) -> None:
    job = submitted(bridge, storage)
    callback = provider.callback(job, outputs={"a.pdf": b"%PDF converted"})
    completion = complete(bridge, "cloudconvert", callback)
    assert (completion.status, completion.outcome) == ("recorded", "finished")
    assert storage.objects[(BUCKET, "outbox/a.png.pdf")].data == b"%PDF converted"
    result = record(storage, "results/a.png.json")
    assert result["status"] == "finished"
    assert result["source"]["size"] == len(b"\x89PNG image")
    assert result["outputs"] == [{"storage": "s3", "location": BUCKET, "key": "outbox/a.png.pdf",
                                  "filename": "a.pdf", "size": len(b"%PDF converted")}]
    assert result["submitted_at"]


def test_a_failed_job_gets_a_failure_report_with_the_providers_code(
        bridge: Bridge, storage: MemoryStorage, provider: ScriptedProvider) -> None:
    job = submitted(bridge, storage)
    callback = provider.callback(job, "failed", code="CORRUPT", message="not a PNG")
    assert complete(bridge, "cloudconvert", callback).outcome == "failed"
    report = record(storage, "failures/a.png.json")
    assert report["error"] == {"task": "convert", "code": "CORRUPT", "message": "not a PNG"}
    assert record(storage, "results/a.png.json") == report


def test_an_output_that_cannot_be_downloaded_is_reported_as_a_relay_failure(
        bridge: Bridge, storage: MemoryStorage, provider: ScriptedProvider) -> None:
    job = submitted(bridge, storage)
    callback = provider.callback(job, outputs={"a.pdf": b"%PDF"})
    provider.jobs[job].outputs.clear()  # the download answers 404
    assert complete(bridge, "cloudconvert", callback).outcome == "failed"
    report = record(storage, "failures/a.png.json")
    assert (report["error"]["task"], report["error"]["code"]) == ("relay", "OUTPUT_UNAVAILABLE")
    assert "outbox/a.png.pdf" not in storage.keys(BUCKET)


def test_a_replayed_callback_writes_nothing_again(
        bridge: Bridge, storage: MemoryStorage, provider: ScriptedProvider) -> None:
    job = submitted(bridge, storage)
    callback = provider.callback(job, outputs={"a.pdf": b"%PDF"})
    complete(bridge, "cloudconvert", callback)
    revision = storage.objects[(BUCKET, "results/a.png.json")].revision
    again = complete(bridge, "cloudconvert", callback)
    assert (again.status, again.outcome) == ("duplicate", "finished")
    assert storage.objects[(BUCKET, "results/a.png.json")].revision == revision


def test_a_callback_replayed_after_its_claim_expired_is_stopped_by_the_record(
        storage: MemoryStorage, provider: ScriptedProvider) -> None:
    claims = MemoryClaims()
    bridge = memory_bridge(RULES, storage=storage, provider=provider, claims=claims)
    job = submitted(bridge, storage)
    callback = provider.callback(job, outputs={"a.pdf": b"%PDF"})
    complete(bridge, "cloudconvert", callback)
    revision = storage.objects[(BUCKET, "results/a.png.json")].revision
    claims.forget()
    assert complete(bridge, "cloudconvert", callback).status == "duplicate"
    assert storage.objects[(BUCKET, "results/a.png.json")].revision == revision


def test_a_callback_for_another_job_than_the_recorded_one_is_refused(
        bridge: Bridge, storage: MemoryStorage, provider: ScriptedProvider) -> None:
    job = submitted(bridge, storage)
    provider.jobs["job-other"] = provider.jobs[job]
    callback = provider.callback("job-other", outputs={"a.pdf": b"%PDF"})
    with pytest.raises(CallbackSignatureError):
        complete(bridge, "cloudconvert", callback)
    assert record(storage, "results/a.png.json")["status"] == "submitted"


def test_a_callback_of_an_older_submission_leaves_the_newer_record_alone(
        bridge: Bridge, storage: MemoryStorage, provider: ScriptedProvider) -> None:
    first = submitted(bridge, storage)
    second = submitted(bridge, storage)  # the same key uploaded again
    callback = provider.callback(first, outputs={"a.pdf": b"%PDF old"})
    assert complete(bridge, "cloudconvert", callback).status == "ignored"
    result = record(storage, "results/a.png.json")
    assert (result["status"], result["job_id"]) == ("submitted", second)
    assert "outbox/a.png.pdf" not in storage.keys(BUCKET)


def test_a_callback_whose_rule_changed_since_is_refused(
        bridge: Bridge, storage: MemoryStorage, provider: ScriptedProvider) -> None:
    job = submitted(bridge, storage)
    callback = provider.callback(job, outputs={"a.pdf": b"%PDF"})
    changed = memory_bridge(RULES.replace("outputs: outbox/", "outputs: elsewhere/"),
                            storage=storage, provider=provider)
    with pytest.raises(ContextError):
        accept(changed, "cloudconvert", callback)
    assert record(storage, "results/a.png.json")["status"] == "submitted"


def test_a_callback_with_a_wrong_signature_is_refused(
        bridge: Bridge, storage: MemoryStorage, provider: ScriptedProvider) -> None:
    job = submitted(bridge, storage)
    callback = provider.callback(job, outputs={"a.pdf": b"%PDF"})
    with pytest.raises(CallbackSignatureError):
        accept(bridge, "cloudconvert",
               replace(callback, body=callback.body.replace(b"finished", b"failed")))


def test_progress_events_are_accepted_as_nothing_to_do(
        bridge: Bridge, storage: MemoryStorage, provider: ScriptedProvider) -> None:
    job = submitted(bridge, storage)
    finished = provider.callback(job).body
    progress = provider.signed(finished.replace(b'"event": "job.finished"',
                                                b'"event": "job.progress"'))
    assert accept(bridge, "cloudconvert", progress) is None
    assert complete(bridge, "cloudconvert", progress).status == "ignored"
    assert record(storage, "results/a.png.json")["status"] == "submitted"


def test_settling_takes_the_source_size_from_the_context_not_the_record(
        bridge: Bridge, storage: MemoryStorage, provider: ScriptedProvider) -> None:
    job = submitted(bridge, storage)
    callback = provider.callback(job, outputs={"a.pdf": b"%PDF"})
    accepted = accept(bridge, "cloudconvert", callback)
    assert accepted is not None
    storage.put(BUCKET, "results/a.png.json",
                storage.objects[(BUCKET, "results/a.png.json")].data.replace(
                    b'"size": 10', b'"size": 99'))
    settle(bridge, accepted)
    assert record(storage, "results/a.png.json")["source"]["size"] == 10


def test_a_context_signed_before_it_carried_the_source_size_still_verifies(
        bridge: Bridge) -> None:
    context = JobContext.new(rule="png-to-pdf", storage="s3", location=BUCKET,
                             key="inbox/a.png", version="1", output_key="outbox/a.pdf",
                             route="relay", source_size=10)
    fields = {"v": 1, **asdict(context)}
    del fields["source_size"]  # what an earlier release signed
    payload = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=")
    token = f"{payload.decode()}.{hmac.new(bridge.context_key(), payload, sha256).hexdigest()}"
    assert verify_context(token, bridge.context_key(), max_age_seconds=60) == replace(
        context, source_size=None)
