"""Exactly-once submission as a Hypothesis property over interleavings, with the in-memory
storage, claims and a provider that finds jobs by tag.

Generated runs upload new versions of one key and interleave deliveries of their events
(duplicates included), deliveries whose invocation dies after the job was made and before it
was recorded, callbacks (also ones that come before the create request answered), a
submission of one version made while another's job is being created, and the end of every
invocation's time. Whatever the order:

* one job per version of the key, however often and however interrupted its event came;
* a settled record never goes back: it is replaced only by a newer submission's record;
* once every event was delivered again and every callback came, the record is the newest
  submission's, settled.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from convbridge.bridge import Bridge
from convbridge.context import nonce_order, verify_context
from convbridge.model import JobSpec, ObjectRef
from convbridge.pipeline import complete, submit_all
from convbridge.testing import MemoryClaims, memory_bridge
from tests.unit.test_pipeline_memory import BUCKET, RULES
from tests.unit.test_submit_claims import RECORD, Died, FindingProvider, RecordingStorage

KEY = "inbox/a.png"

Step = tuple[Any, ...]
steps = st.lists(st.one_of(
    st.just(("upload",)),
    st.tuples(st.just("deliver"), st.integers(0, 3)),
    st.tuples(st.just("deliver_dying"), st.integers(0, 3)),
    st.tuples(st.just("deliver_called_back"), st.integers(0, 3)),
    st.tuples(st.just("deliver_during"), st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.just("callback"), st.integers(0, 5), st.sampled_from(["finished", "failed"])),
    st.just(("end",)),
), max_size=10)


class WatchedStorage(RecordingStorage):
    """Runs ``watch`` after every write of the result record, so a record that went back
    even for a moment inside one step is seen."""

    def __init__(self) -> None:
        super().__init__()
        self.watch: Callable[[], None] = lambda: None

    def put_bytes(self, location: str, key: str, data: bytes, *, content_type: str,
                  metadata: Mapping[str, str], if_revision: str | None = None,
                  if_absent: bool = False) -> str:
        revision = super().put_bytes(location, key, data, content_type=content_type,
                                     metadata=metadata, if_revision=if_revision,
                                     if_absent=if_absent)
        if key == RECORD:
            self.watch()
        return revision


class Run:
    """One generated run: the parts, what was uploaded, and the record as it went."""

    def __init__(self) -> None:
        self.storage = WatchedStorage()
        self.storage.watch = self.check_record_never_went_back
        self.claims = MemoryClaims()
        self.provider = FindingProvider(on_create=self._during_create)
        self.bridge: Bridge = memory_bridge(RULES, storage=self.storage,
                                            provider=self.provider, claims=self.claims)
        self.versions: list[ObjectRef] = []
        self.during: list[ObjectRef] = []
        self.call_back_at_once = False
        self.shown: Mapping[str, Any] | None = None

    def upload(self) -> None:
        data = b"\x89PNG version %d" % len(self.versions)
        self.versions.append(self.storage.put(BUCKET, KEY, data))

    def version(self, index: int) -> ObjectRef | None:
        return self.versions[index % len(self.versions)] if self.versions else None

    def deliver(self, ref: ObjectRef) -> None:
        for submission in submit_all(self.bridge, [ref]):
            assert submission.status in {"submitted", "duplicate", "retry"}, submission

    def _during_create(self, spec: JobSpec) -> None:
        if self.during:
            self.deliver(self.during.pop())

    def callback(self, job_id: str, status: str) -> None:
        request = self.provider.callback(job_id, status, outputs={"a.pdf": b"%PDF"},
                                         code="X" if status == "failed" else None)
        assert complete(self.bridge, "cloudconvert", request).status in {
            "recorded", "duplicate", "ignored"}

    def step(self, step: Step) -> None:
        kind = step[0]
        if kind == "upload":
            self.upload()
        elif kind == "end":
            self.claims.end_invocations()
        elif kind == "callback":
            jobs = list(self.provider.jobs)
            if jobs:
                self.callback(jobs[step[1] % len(jobs)], step[2])
        elif (ref := self.version(step[1])) is not None:
            if kind == "deliver":
                self.deliver(ref)
            elif kind == "deliver_dying":
                self.storage.die_on_record = True
                with contextlib.suppress(Died):  # a duplicate never gets as far
                    self.deliver(ref)
                self.storage.die_on_record = False
            elif kind == "deliver_called_back":
                self.call_back_at_once = True
                self.deliver(ref)
                self.call_back_at_once = False
            elif kind == "deliver_during":
                other = self.version(step[2])
                assert other is not None
                self.during = [other]
                self.deliver(ref)
                self.during = []
        self.check_record_never_went_back()

    def check_record_never_went_back(self) -> None:
        now = self.storage.json(BUCKET, RECORD) if (BUCKET, RECORD) in self.storage.objects \
            else None
        before = self.shown
        if before is not None:
            assert now is not None
            if now["context_nonce"] == before["context_nonce"]:
                if before["status"] in {"finished", "failed"}:
                    assert now == before  # settled once, and kept
            else:
                assert nonce_order(now["context_nonce"]) > nonce_order(  # type: ignore[operator]
                    before["context_nonce"])
        self.shown = now

    def nonce_of(self, job_id: str) -> str:
        token = self.provider.jobs[job_id].spec.context_token
        return verify_context(token, b"k" * 32, max_age_seconds=3600).nonce


class CallsBackWhenAsked(FindingProvider):
    run: Run

    def create_job(self, document: Mapping[str, Any]) -> str:
        job_id = super().create_job(document)
        if self.run.call_back_at_once:
            self.run.call_back_at_once = False  # only the job being delivered, not nested ones
            self.run.callback(job_id, "finished")
        return job_id


@settings(max_examples=50, deadline=None)  # about 8 s
@given(plan=steps)
def test_one_job_per_version_and_the_newest_submission_keeps_the_record(
        plan: list[Step]) -> None:
    run = Run()
    run.provider = CallsBackWhenAsked(on_create=run._during_create)
    run.provider.run = run
    run.bridge = memory_bridge(RULES, storage=run.storage, provider=run.provider,
                               claims=run.claims)
    run.upload()
    for step in plan:
        run.step(step)
    # every event delivered again once every invocation's time is up, then every callback
    run.claims.end_invocations()
    for ref in run.versions:
        run.deliver(ref)
    run.check_record_never_went_back()
    for job_id in list(run.provider.jobs):
        run.callback(job_id, "finished")
        run.check_record_never_went_back()

    per_version = Counter(job.spec.source.version for job in run.provider.jobs.values())
    assert set(per_version.values()) == {1}, per_version
    assert set(per_version) == {ref.version for ref in run.versions}
    newest = max((run.nonce_of(job_id) for job_id in run.provider.jobs), key=nonce_order)
    final = run.storage.json(BUCKET, RECORD)
    assert final["context_nonce"] == newest
    assert final["status"] in {"finished", "failed"}
