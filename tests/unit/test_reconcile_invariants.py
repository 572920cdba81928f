"""Invariants of the reconciler that need no provider: the job context it rebuilds from a
submitted record is exactly the one the submission signed, and its bounded walk, run after
run, reads every result record once per pass (a storage in memory stands in for the bucket,
since listing order and page bounds are the point here, not any storage's wire format)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from convbridge import records
from convbridge.bridge import Bridge
from convbridge.context import JobContext
from convbridge.errors import StorageError
from convbridge.model import ObjectRef
from convbridge.reconcile import CURSOR_PREFIX, _context, reconcile
from convbridge.records import ResultRecord
from convbridge.rules import parse_rules
from tests.memory_rules import PNG_TO_PDF

RULES = parse_rules(PNG_TO_PDF)
RULE = RULES.rules[0]
#: key segments as users name files: letters, digits, spaces and a little punctuation
SEGMENT = st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters=" -_()"),
                  min_size=1, max_size=12)
KEYS = st.lists(SEGMENT, min_size=1, max_size=3).map(lambda parts: "inbox/" + "/".join(parts)
                                                     + ".png")


@settings(max_examples=60, deadline=None)
@given(key=KEYS, version=st.none() | st.text(min_size=1, max_size=20),
       route=st.sampled_from(["native", "relay"]))
def test_the_context_rebuilt_from_a_submitted_record_is_the_one_the_submission_signed(
        key: str, version: str | None, route: str) -> None:
    """60 examples."""
    ref = ObjectRef("s3", "bucket", key, version=version, size=10)
    signed = JobContext.new(rule=RULE.name, storage="s3", location="bucket", key=key,
                            version=version, output_key=RULE.output_key(key), route=route,
                            source_size=ref.size)
    record = ResultRecord.from_json(json.loads(json.dumps(records.submitted_record(
        ref, RULE, job_id="job-1", route=route, context_nonce=signed.nonce).to_json())))
    assert record is not None and record.submitted_at is not None
    submitted_at = datetime.fromisoformat(record.submitted_at)
    rebuilt = _context(RULE, RULE.result_key(key), record, submitted_at)
    assert rebuilt == replace(signed, issued_at=int(submitted_at.timestamp()))
    # the same record found under another source's record key is not this rule's to settle
    assert _context(RULE, RULE.result_key(key + "x.png"), record, submitted_at) is None
    moved = replace(record, source=replace(record.source, location="other-bucket"))
    assert _context(RULE, RULE.result_key(key), moved, submitted_at) is None


class _Bucket:
    """The few Storage calls the walk makes, in memory, listing keys in sorted order."""

    def __init__(self, objects: Mapping[str, bytes]) -> None:
        self.objects = dict(objects)
        self.reads: list[str] = []

    def list_keys(self, location: str, prefix: str) -> Iterator[str]:
        yield from sorted(k for k in self.objects if k.startswith(prefix))

    def read_bytes(self, location: str, key: str) -> bytes:
        self.reads.append(key)
        if key not in self.objects:
            raise StorageError(f"{key} does not exist")
        return self.objects[key]

    def write_json(self, location: str, key: str, document: Mapping[str, Any], *,
                   marker: str) -> str:
        self.objects[key] = json.dumps(document).encode()
        return "1"


class _Bridge:
    def __init__(self, bucket: _Bucket) -> None:
        self.rules = RULES
        self._bucket = bucket

    def storage(self, name: str) -> _Bucket:
        return self._bucket


@settings(max_examples=40, deadline=None)
@given(count=st.integers(0, 30), per_run=st.integers(1, 8))
def test_bounded_runs_read_every_record_once_per_pass(count: int, per_run: int) -> None:
    """40 examples. Records young enough that no provider is asked: only the walk shows."""
    record = json.dumps({"schema": records.SCHEMA, "status": "submitted", "rule": RULE.name,
                         "submitted_at": datetime.now(UTC).isoformat()}).encode()
    bucket = _Bucket({f"results/{n:03d}.png.json": record for n in range(count)})
    bridge = cast(Bridge, _Bridge(bucket))
    now = datetime.now(UTC) + timedelta(minutes=1)
    runs = 0
    while True:
        runs += 1
        report = reconcile(bridge, now=now, max_records=per_run)
        assert report.items == [] and report.examined <= per_run
        if not report.resumed_later:
            break
    records_read = [key for key in bucket.reads if CURSOR_PREFIX not in key]
    assert sorted(records_read) == sorted(k for k in bucket.objects if k.endswith(".json"))
    assert runs == max(1, math.ceil(count / per_run))
    # the next pass starts again from the first record
    bucket.reads.clear()
    reconcile(bridge, now=now, max_records=per_run)
    assert [k for k in bucket.reads if CURSOR_PREFIX not in k] == sorted(
        k for k in bucket.objects if k.endswith(".json"))[:per_run]
