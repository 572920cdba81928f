"""Records of two rules, two providers and every status, in a memory storage: what the
``convbridge status`` tests read (terminal table and HTML page alike)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from convbridge.bridge import Bridge
from convbridge.model import JobOutcome, ObjectRef, OutcomeStatus, OutputFile
from convbridge.pipeline.record_io import write_failure
from convbridge.records import (
    ResultRecord,
    outcome_record,
    rejected_record,
    submitted_record,
    submitting_record,
)
from convbridge.rules import Rule
from convbridge.testing import MemoryStorage, memory_bridge

BUCKET = "my-bucket"
RULES = f"""
version: 1
rules:
  - name: photos
    match: {{storage: s3, location: {BUCKET}, prefix: inbox/, suffixes: [.png]}}
    convert: {{to: pdf}}
    provider: cloudconvert
    outputs: outbox/
    results: results/
    failures: failures/
  - name: docs
    match: {{storage: s3, location: {BUCKET}, prefix: docs/, suffixes: [.docx]}}
    convert: {{to: pdf}}
    provider: freeconvert
    outputs: docs-out/
    results: docs-results/
    failures: docs-failures/
"""
#: a source key that is markup: every view must show it as text
SCRIPT_KEY = "inbox/<script>document.title='pwned'</script>.png"
SUBMITTED_AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
#: photos: four finished jobs and one failed one, seconds from submission to the end
PHOTO_SECONDS = (2, 4, 6, 8)
FAILED_SECONDS = 100
#: docs: two finished jobs, one of them recorded three days ago
DOC_SECONDS = (30, 90)
FAILURE_CODE = "CONVERSION_FAILED"
FAILURE_MESSAGE = "the file is damaged & <b>cannot</b> be read"


def ref(key: str) -> ObjectRef:
    return ObjectRef("s3", BUCKET, key, version="v1", size=10)


def finished(rule: Rule, key: str, seconds: int, *,
             status: OutcomeStatus = "finished") -> ResultRecord:
    ended = SUBMITTED_AT + timedelta(seconds=seconds)
    outputs = [OutputFile(filename="out.pdf", size=5, key=rule.output_key(key))] \
        if status == "finished" else []
    outcome = JobOutcome(provider=rule.provider, job_id=f"job-{key}", status=status,
                         failed_task="convert" if status == "failed" else None,
                         code=FAILURE_CODE if status == "failed" else None,
                         message=FAILURE_MESSAGE if status == "failed" else None,
                         ended_at=ended)
    return outcome_record(ref(key), rule, outcome, route="relay", outputs=outputs,
                          context_nonce="n", submitted_at=SUBMITTED_AT.isoformat())


def store(storage: MemoryStorage, rule: Rule, key: str, record: ResultRecord) -> None:
    if record.status in {"failed", "rejected"}:
        write_failure(storage, rule, BUCKET, key, record)
    else:
        storage.write_json(BUCKET, rule.result_key(key), record.to_json(), marker=rule.name)


def status_bridge() -> Bridge:
    storage = MemoryStorage()
    bridge = memory_bridge(RULES, storage=storage)
    photos, docs = bridge.rules.rules
    for index, seconds in enumerate(PHOTO_SECONDS):
        store(storage, photos, f"inbox/p{index}.png", finished(photos, f"inbox/p{index}.png",
                                                               seconds))
    store(storage, photos, SCRIPT_KEY, finished(photos, SCRIPT_KEY, FAILED_SECONDS,
                                                status="failed"))
    store(storage, photos, "inbox/waiting.png",
          submitted_record(ref("inbox/waiting.png"), photos, job_id="job-w", route="relay",
                           context_nonce="n"))
    recent, old = (finished(docs, f"docs/d{i}.docx", s) for i, s in enumerate(DOC_SECONDS))
    store(storage, docs, "docs/d0.docx", recent)
    three_days_ago = (datetime.now(UTC) - timedelta(days=3)).isoformat(timespec="seconds")
    store(storage, docs, "docs/d1.docx", replace(old, recorded_at=three_days_ago))
    store(storage, docs, "docs/big.docx",
          rejected_record(ref("docs/big.docx"), docs, code="TOO_LARGE",
                          message="docs/big.docx is 2 GB, over max_size_bytes"))
    store(storage, docs, "docs/new.docx",
          submitting_record(ref("docs/new.docx"), docs, context_nonce="n", route="relay",
                            issued_at=int(SUBMITTED_AT.timestamp())))
    # not records: the reconciler's cursor and a source moved aside beside its report
    storage.put(BUCKET, "results/.convbridge-reconcile-photos", b'{"passed": 0}')
    storage.put(BUCKET, "docs-failures/big.docx", b"the source itself")
    return bridge


def use_bridge(monkeypatch: pytest.MonkeyPatch, bridge: Bridge) -> None:
    """``convbridge status`` reads through ``bridge`` instead of the deployed environment."""
    monkeypatch.setattr(Bridge, "from_env", classmethod(lambda cls, env=None: bridge))
