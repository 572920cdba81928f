"""Result records: one schema written field for field as documented, read back whole, and
documents that are not records are never taken for one."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from convbridge import records
from convbridge.model import JobOutcome, ObjectRef, OutputFile
from convbridge.records import RecordError, RecordSource, ResultRecord
from convbridge.rules import parse_rules

RULE = parse_rules("""\
version: 1
rules:
  - name: docs
    match: {storage: s3, location: bucket, prefix: inbox/, suffixes: [.docx]}
    convert: {to: pdf}
    provider: cloudconvert
    outputs: outbox/
    results: results/
    failures: failures/
""").rules[0]
SOURCE = ObjectRef("s3", "bucket", "inbox/a b.docx", version="v1", size=10)
FIELDS = ["schema", "status", "source", "rule", "provider", "context_nonce", "job_id", "route",
          "outputs", "error", "submitted_at", "finished_at", "recorded_at"]


def failed() -> ResultRecord:
    outcome = JobOutcome(provider="cloudconvert", job_id="job-1", status="failed",
                         failed_task="convert", code="CORRUPT", message="not a document",
                         ended_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    return records.outcome_record(SOURCE, RULE, outcome, route="relay", outputs=[],
                                  context_nonce="n1", submitted_at="2026-01-02T03:00:00+00:00")


def test_a_record_is_written_with_the_documented_fields_in_order() -> None:
    document = failed().to_json()
    assert list(document) == FIELDS
    assert document["schema"] == records.SCHEMA == "convbridge.record/1"
    assert document["source"] == {"storage": "s3", "location": "bucket",
                                  "key": "inbox/a b.docx", "version": "v1", "size": 10}
    assert document["error"] == {"task": "convert", "code": "CORRUPT",
                                 "message": "not a document"}
    assert (document["finished_at"], document["context_nonce"]) == (
        "2026-01-02T03:04:05+00:00", "n1")


@pytest.mark.parametrize("record", [
    failed(),
    records.submitting_record(SOURCE, RULE, context_nonce="n1", route="relay",
                              issued_at=1767323045),
    records.submitted_record(SOURCE, RULE, job_id="job-1", route="native", context_nonce="n1"),
    records.rejected_record(SOURCE, RULE, code="EMPTY_OBJECT", message="empty"),
    records.outcome_record(SOURCE, RULE, JobOutcome("cloudconvert", "job-2", "finished"),
                           route="relay", context_nonce="n2",
                           outputs=[OutputFile("a b.pdf", 7, key="outbox/a b.docx.pdf")]),
])
def test_every_kind_of_record_reads_back_as_written(record: ResultRecord) -> None:
    stored = json.loads(json.dumps(record.to_json()))
    assert ResultRecord.from_json(stored) == record
    assert ResultRecord.from_json(stored).to_json() == stored  # type: ignore[union-attr]


def test_a_record_written_before_records_named_their_context_is_read_and_kept_so() -> None:
    legacy = {name: value for name, value in failed().to_json().items()
              if name != "context_nonce"}
    record = ResultRecord.from_json(legacy)
    assert record is not None and not record.names_context
    assert (record.status, record.job_id, record.final) == ("failed", "job-1", True)
    assert record.to_json() == legacy


def test_unexpected_types_in_a_record_read_as_absent() -> None:
    document = failed().to_json() | {"job_id": 7, "outputs": "x", "error": [1],
                                     "extra": "kept out"}
    document["source"] = {**document["source"], "size": "10", "version": None}
    record = ResultRecord.from_json(document)
    assert record is not None
    assert (record.job_id, record.outputs, record.error) == (None, (), None)
    assert record.source == RecordSource("s3", "bucket", "inbox/a b.docx", None, None)
    assert failed().error == RecordError("convert", "CORRUPT", "not a document")


@pytest.mark.parametrize("document", [
    None, [], "a record", {},
    {"schema": "convbridge.record/2", "status": "failed", "source": {}},
    failed().to_json() | {"status": "lost"},
    failed().to_json() | {"source": None},
    failed().to_json() | {"source": {"storage": "s3", "location": "bucket"}},
    {"status": "failed", "job_id": "job-1"},
])
def test_a_document_that_is_not_a_record_is_refused(document: object) -> None:
    assert ResultRecord.from_json(document) is None
