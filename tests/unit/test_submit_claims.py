"""The submit claim and its one record, over the in-memory storage, provider and claims: the
races at-least-once delivery and fast callbacks bring, and what each leaves for a user.

A first upload writes its result record once (create-only, naming the job); nothing is
written before the job exists; a duplicate delivery is answered from the holder's claim and
that record, and a trigger that died mid-submission is taken over without a second job.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from convbridge.bridge import Bridge
from convbridge.claims import SUBMIT_SCOPE, ClaimInProgress, SubmitClaim, claim_id
from convbridge.model import JobSpec, ObjectRef
from convbridge.pipeline import complete, submit, submit_all
from convbridge.testing import MemoryClaims, MemoryStorage, ScriptedProvider, memory_bridge
from tests.unit.test_pipeline_memory import BUCKET, RULES, record, upload

RECORD = "results/a.png.json"


class Died(BaseException):
    """The invocation ended here (a timeout or a crash): nothing after it runs."""


class RecordingStorage(MemoryStorage):
    """Counts writes of the result record; ``die_on_record`` ends the invocation at the next
    one, before it is written."""

    def __init__(self) -> None:
        super().__init__()
        self.record_writes = 0
        self.die_on_record = False

    def put_bytes(self, location: str, key: str, data: bytes, *, content_type: str,
                  metadata: Mapping[str, str], if_revision: str | None = None,
                  if_absent: bool = False) -> str:
        if key == RECORD:
            if self.die_on_record:
                self.die_on_record = False
                raise Died
            self.record_writes += 1
        return super().put_bytes(location, key, data, content_type=content_type,
                                 metadata=metadata, if_revision=if_revision,
                                 if_absent=if_absent)


class FindingProvider(ScriptedProvider):
    """A provider that looks jobs up by their tag (CloudConvert v2, FreeConvert)."""

    finds_jobs = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lookups = 0

    def find_job(self, context_token: str) -> str | None:
        self.lookups += 1
        return next((job.job_id for job in self.jobs.values()
                     if job.spec.context_token == context_token), None)


@pytest.fixture
def storage() -> RecordingStorage:
    return RecordingStorage()


@pytest.fixture
def claims() -> MemoryClaims:
    return MemoryClaims()


def bridge_of(storage: MemoryStorage, provider: ScriptedProvider,
              claims: MemoryClaims) -> Bridge:
    return memory_bridge(RULES, storage=storage, provider=provider, claims=claims)


def test_a_first_upload_writes_its_record_once_and_only_once_the_job_exists(
        storage: RecordingStorage, claims: MemoryClaims) -> None:
    seen_at_create: list[bool] = []
    provider = ScriptedProvider(on_create=lambda spec: seen_at_create.append(
        (BUCKET, RECORD) in storage.objects))
    submission = submit(bridge_of(storage, provider, claims), upload(storage, "inbox/a.png"))
    assert (submission.status, submission.job_id) == ("submitted", "job-1")
    assert seen_at_create == [False]  # no `submitting` record before the job
    assert storage.record_writes == 1
    shown = record(storage, RECORD)
    assert (shown["status"], shown["job_id"]) == ("submitted", "job-1")
    [held] = claims.submissions.values()
    assert held.nonce == shown["context_nonce"] and held.route == shown["route"]


class CallsBackAtOnce(ScriptedProvider):
    """A provider whose job finishes and calls back before its create request answers."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.bridge: Bridge | None = None

    def create_job(self, document: Mapping[str, Any]) -> str:
        job_id = super().create_job(document)
        assert self.bridge is not None
        done = complete(self.bridge, self.name, self.callback(job_id, outputs={"a.pdf": b"%PDF"}))
        assert done.status == "recorded"
        return job_id


def test_a_callback_that_comes_before_the_create_answered_wins(
        storage: RecordingStorage, claims: MemoryClaims) -> None:
    provider = CallsBackAtOnce()
    bridge = provider.bridge = bridge_of(storage, provider, claims)
    submission = submit(bridge, upload(storage, "inbox/a.png"))
    assert (submission.status, submission.job_id) == ("submitted", "job-1")
    shown = record(storage, RECORD)
    assert (shown["status"], shown["job_id"]) == ("finished", "job-1")
    assert storage.objects[(BUCKET, "outbox/a.png.pdf")].data == b"%PDF"


def test_a_fast_callback_of_a_reupload_finds_the_older_record_and_still_settles(
        storage: RecordingStorage, claims: MemoryClaims) -> None:
    provider = CallsBackAtOnce()
    bridge = provider.bridge = bridge_of(storage, provider, claims)
    submit(bridge, upload(storage, "inbox/a.png"))
    again = submit(bridge, upload(storage, "inbox/a.png", b"\x89PNG newer"))
    assert again.status == "submitted"
    shown = record(storage, RECORD)
    assert (shown["status"], shown["job_id"]) == ("finished", "job-2")


def test_a_reupload_replaces_the_older_record_and_the_older_job_changes_nothing(
        storage: RecordingStorage, claims: MemoryClaims) -> None:
    provider = ScriptedProvider()
    bridge = bridge_of(storage, provider, claims)
    submit(bridge, upload(storage, "inbox/a.png"))
    complete(bridge, "cloudconvert", provider.callback("job-1", outputs={"a.pdf": b"%PDF v1"}))
    newer = submit(bridge, upload(storage, "inbox/a.png", b"\x89PNG newer"))
    assert (newer.status, newer.job_id) == ("submitted", "job-2")
    shown = record(storage, RECORD)
    assert (shown["status"], shown["job_id"]) == ("submitted", "job-2")
    late = complete(bridge, "cloudconvert", provider.callback("job-1", outputs={"a.pdf": b"x"}))
    assert late.status in {"ignored", "duplicate"}
    assert record(storage, RECORD)["job_id"] == "job-2"


def test_an_older_submission_never_overwrites_a_newer_record(
        storage: RecordingStorage, claims: MemoryClaims) -> None:
    """The older upload's create answers only after the newer upload was submitted."""

    def newer_first(spec: JobSpec) -> None:
        if spec.source.version == older.version:
            assert submit(bridge, upload(storage, "inbox/a.png", b"\x89PNG new")).status == (
                "submitted")

    provider = ScriptedProvider(on_create=newer_first)
    bridge = bridge_of(storage, provider, claims)
    older = upload(storage, "inbox/a.png")
    assert submit(bridge, older).status == "submitted"  # its job exists and calls back later
    shown = record(storage, RECORD)
    assert shown["job_id"] == "job-2" and shown["source"]["version"] != older.version
    late = complete(bridge, "cloudconvert", provider.callback("job-1", outputs={"a.pdf": b"x"}))
    assert late.status == "ignored"
    assert record(storage, RECORD) == shown


def test_a_duplicate_while_the_first_delivery_runs_waits_for_redelivery(
        storage: RecordingStorage, claims: MemoryClaims) -> None:
    answers: list[str] = []

    def duplicate(spec: JobSpec) -> None:
        [again] = submit_all(bridge, [ref])
        answers.append(again.status)

    provider = ScriptedProvider(on_create=duplicate)
    bridge = bridge_of(storage, provider, claims)
    ref = upload(storage, "inbox/a.png")
    assert submit(bridge, ref).status == "submitted"
    assert answers == ["retry"]
    assert list(provider.jobs) == ["job-1"]
    later = submit(bridge, ref)
    assert (later.status, later.reason, later.job_id) == ("duplicate", "already submitted",
                                                          "job-1")


def test_a_duplicate_after_the_callback_answers_from_the_settled_record(
        storage: RecordingStorage, claims: MemoryClaims) -> None:
    provider = ScriptedProvider()
    bridge = bridge_of(storage, provider, claims)
    ref = upload(storage, "inbox/a.png")
    submit(bridge, ref)
    complete(bridge, "cloudconvert", provider.callback("job-1", outputs={"a.pdf": b"%PDF"}))
    claims.end_invocations()  # long after: the holder's deadline passed too
    again = submit(bridge, ref)
    assert (again.status, again.reason, again.job_id) == ("duplicate", "already finished",
                                                          "job-1")
    assert list(provider.jobs) == ["job-1"]


def died_after_create(storage: RecordingStorage, bridge: Bridge, ref: ObjectRef) -> None:
    storage.die_on_record = True
    with pytest.raises(Died):
        submit(bridge, ref)
    assert (BUCKET, RECORD) not in storage.objects


def test_a_duplicate_while_a_dead_holders_deadline_runs_is_left_for_later(
        storage: RecordingStorage, claims: MemoryClaims) -> None:
    provider = FindingProvider()
    bridge = bridge_of(storage, provider, claims)
    ref = upload(storage, "inbox/a.png")
    died_after_create(storage, bridge, ref)
    with pytest.raises(ClaimInProgress):
        submit(bridge, ref)
    assert list(provider.jobs) == ["job-1"] and provider.lookups == 0


def test_a_trigger_that_died_after_the_create_is_taken_over_and_its_job_recorded(
        storage: RecordingStorage, claims: MemoryClaims) -> None:
    provider = FindingProvider()
    bridge = bridge_of(storage, provider, claims)
    ref = upload(storage, "inbox/a.png")
    died_after_create(storage, bridge, ref)
    claims.end_invocations()
    again = submit(bridge, ref)
    assert (again.status, again.job_id) == ("duplicate", "job-1")
    assert list(provider.jobs) == ["job-1"]  # looked up by its tag, not made twice
    shown = record(storage, RECORD)
    assert (shown["status"], shown["job_id"]) == ("submitted", "job-1")
    # the job's callback settles it, and every later delivery is a plain duplicate
    assert complete(bridge, "cloudconvert", provider.callback(
        "job-1", outputs={"a.pdf": b"%PDF"})).status == "recorded"
    claims.end_invocations()
    assert submit(bridge, ref).status == "duplicate"
    assert list(provider.jobs) == ["job-1"]


def test_a_trigger_that_died_before_any_job_is_taken_over_and_submitted(
        storage: RecordingStorage, claims: MemoryClaims) -> None:
    deaths = [Died()]

    def die_once(spec: JobSpec) -> None:
        if deaths:
            raise deaths.pop()

    provider = FindingProvider(on_create=die_once)  # dies before the provider made the job
    bridge = bridge_of(storage, provider, claims)
    ref = upload(storage, "inbox/a.png")
    with pytest.raises(Died):
        submit(bridge, ref)
    assert provider.jobs == {} and claims.submissions  # the claim stayed with the dead holder
    with pytest.raises(ClaimInProgress):
        submit(bridge, ref)
    claims.end_invocations()
    again = submit(bridge, ref)
    assert (again.status, again.job_id) == ("submitted", "job-2")
    assert list(provider.jobs) == ["job-2"] and provider.lookups == 1
    assert record(storage, RECORD)["job_id"] == "job-2"


def test_where_jobs_cannot_be_found_a_dead_holders_upload_is_submitted_anew(
        storage: RecordingStorage, claims: MemoryClaims) -> None:
    provider = ScriptedProvider()
    bridge = bridge_of(storage, provider, claims)
    ref = upload(storage, "inbox/a.png")
    died_after_create(storage, bridge, ref)
    claims.end_invocations()
    again = submit(bridge, ref)
    assert (again.status, again.job_id) == ("submitted", "job-2")
    assert record(storage, RECORD)["job_id"] == "job-2"


def test_a_rejected_object_is_reported_once_however_often_it_is_delivered(
        storage: RecordingStorage, claims: MemoryClaims) -> None:
    bridge = bridge_of(storage, ScriptedProvider(), claims)
    ref = upload(storage, "inbox/a.png", b"")
    assert submit(bridge, ref).status == "rejected"
    revision = storage.objects[(BUCKET, "failures/a.png.json")].revision
    again = submit(bridge, ref)
    assert (again.status, again.reason) == ("duplicate", "already rejected")
    assert storage.objects[(BUCKET, "failures/a.png.json")].revision == revision


def test_a_claim_stored_by_the_earlier_release_still_answers_as_a_duplicate(
        storage: RecordingStorage, claims: MemoryClaims) -> None:
    provider = ScriptedProvider()
    bridge = bridge_of(storage, provider, claims)
    ref = upload(storage, "inbox/a.png")
    key = {"storage": "s3", "location": BUCKET, "key": "inbox/a.png", "version": ref.version,
           "rule": "png-to-pdf", "attempt": None}
    claims.submissions[claim_id(SUBMIT_SCOPE, key)] = SubmitClaim(
        nonce=None, completed={"status": "submitted", "reason": "", "job_id": "job-old"})
    again = submit(bridge, ref)
    assert (again.status, again.reason, again.job_id) == ("duplicate", "already submitted",
                                                          "job-old")
    assert provider.jobs == {}
