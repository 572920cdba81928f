"""Result records and failure reports: one JSON schema, written next to the data.

The result record (``<results prefix><relative key>.json``) always holds the latest state of
the source's conversion: ``submitting``, ``submitted``, then ``finished`` or ``failed``. From
``submitting`` on it names the submission's job context (``context_nonce``) and from
``submitted`` on the job the bridge created for it, so the record itself says which job may
settle the context and whether it already has. A failure report
(``<failures prefix><relative key>.json``) is written in addition when a conversion fails or
an object is rejected, so failures can be listed by prefix. Both share the schema documented
in the README under "Records".
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from convbridge.model import JobOutcome, ObjectRef, OutputFile
from convbridge.rules import Rule

SCHEMA = "convbridge.record/1"
#: where a source's conversion stands; ``rejected``: no job was started for it
RecordStatus = Literal["submitting", "submitted", "finished", "failed", "rejected"]
#: statuses of a record whose job context is settled: nothing may write it again
FINAL_STATUSES: frozenset[RecordStatus] = frozenset({"finished", "failed"})


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _source(ref: ObjectRef) -> dict[str, Any]:
    return {"storage": ref.storage, "location": ref.location, "key": ref.key,
            "version": ref.version, "size": ref.size}


def base_record(status: RecordStatus, ref: ObjectRef, rule: Rule, *,
                context_nonce: str | None = None) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "status": status,
        "source": _source(ref),
        "rule": rule.name,
        "provider": rule.provider,
        "context_nonce": context_nonce,
        "job_id": None,
        "route": None,
        "outputs": [],
        "error": None,
        "submitted_at": None,
        "finished_at": None,
        "recorded_at": _now(),
    }


def submitting_record(ref: ObjectRef, rule: Rule, *, context_nonce: str, route: str,
                      issued_at: int) -> dict[str, Any]:
    """``submitted_at`` is the context's own time (whole seconds), so the record with its
    route and nonce rebuilds the very context token the job is tagged with (the reconciler
    looks a job up by it)."""
    record = base_record("submitting", ref, rule, context_nonce=context_nonce)
    record.update(route=route,
                  submitted_at=datetime.fromtimestamp(issued_at, UTC).isoformat())
    return record


def submitted_record(ref: ObjectRef, rule: Rule, *, job_id: str, route: str,
                     context_nonce: str) -> dict[str, Any]:
    record = base_record("submitted", ref, rule, context_nonce=context_nonce)
    record.update(job_id=job_id, route=route, submitted_at=record["recorded_at"])
    return record


def rejected_record(ref: ObjectRef, rule: Rule, *, code: str, message: str) -> dict[str, Any]:
    record = base_record("rejected", ref, rule)
    record["error"] = {"task": None, "code": code, "message": message}
    return record


def outcome_record(
    ref: ObjectRef,
    rule: Rule,
    outcome: JobOutcome,
    *,
    route: str,
    outputs: list[OutputFile],
    context_nonce: str,
    submitted_at: str | None = None,
) -> dict[str, Any]:
    record = base_record(outcome.status, ref, rule, context_nonce=context_nonce)
    record.update(
        provider=outcome.provider,
        job_id=outcome.job_id,
        route=route,
        outputs=[_output(o, ref) for o in outputs],
        submitted_at=submitted_at,
        finished_at=(outcome.ended_at.isoformat(timespec="seconds")
                     if outcome.ended_at else record["recorded_at"]),
    )
    if outcome.status == "failed":
        record["error"] = {"task": outcome.failed_task, "code": outcome.code,
                           "message": outcome.message}
    return record


def _output(output: OutputFile, ref: ObjectRef) -> Mapping[str, Any]:
    return {"storage": ref.storage, "location": ref.location, "key": output.key,
            "filename": output.filename, "size": output.size}
