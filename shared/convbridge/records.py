"""Result records and failure reports: one JSON schema, written next to the data.

The result record (``<results prefix><relative key>.json``) always holds the latest state of
the source's conversion: ``submitted`` (or ``rejected``), then ``finished`` or ``failed``. It
names the submission's job context (``context_nonce``) and, once the job exists, the job the
bridge created for it, so the record itself says which job may settle the context and whether
it already has. A submission writes it once, create-only, when its job exists: it completes
the submission's claim (``convbridge.claims``), and a callback that came first has already
written the settled record, which the submission then leaves alone. Records written by the
earlier release may also be ``submitting`` (written before the job was created); the
reconciler still settles those.

Submissions of one source are ordered by their nonces (``convbridge.context.ordered_nonce``:
issue time to the nanosecond, then the nonce): a record is only ever replaced by a newer
submission's, never by an older one's (:func:`newer_submission`). A failure report
(``<failures prefix><relative key>.json``) is written in addition when a conversion fails or
an object is rejected, so failures can be listed by prefix. Both share the schema documented
in the README under "Records".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from convbridge.context import nonce_order
from convbridge.model import JobOutcome, ObjectRef, OutputFile
from convbridge.rules import Rule

SCHEMA = "convbridge.record/1"
#: where a source's conversion stands; ``rejected``: no job was started for it
RecordStatus = Literal["submitting", "submitted", "finished", "failed", "rejected"]
#: statuses of a record whose job context is settled: nothing may write it again
FINAL_STATUSES: frozenset[RecordStatus] = frozenset({"finished", "failed"})
_STATUSES: frozenset[str] = frozenset(get_args(RecordStatus))


@dataclass(frozen=True)
class RecordSource:
    """The source a record is about, as it was when submitted."""

    storage: str
    location: str
    key: str
    version: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class RecordOutput:
    """One converted file, where it was written."""

    storage: str
    location: str
    key: str | None
    filename: str
    size: int | None = None


@dataclass(frozen=True)
class RecordError:
    """Why a conversion failed or a source was rejected; ``task`` is the provider's failed
    task (None for a rejection)."""

    task: str | None
    code: str | None
    message: str | None


@dataclass(frozen=True)
class ResultRecord:
    """A result record or failure report (the same schema). ``names_context`` is False only
    for records written before records named their job context (no ``context_nonce`` field at
    all): their job id is all they tell about which job may settle them."""

    status: RecordStatus
    source: RecordSource
    rule: str
    provider: str
    context_nonce: str | None = None
    job_id: str | None = None
    route: str | None = None
    outputs: tuple[RecordOutput, ...] = ()
    error: RecordError | None = None
    submitted_at: str | None = None
    finished_at: str | None = None
    recorded_at: str | None = None
    names_context: bool = field(default=True, compare=False)

    @property
    def final(self) -> bool:
        return self.status in FINAL_STATUSES

    def to_json(self) -> dict[str, Any]:
        """The JSON object written to storage, field for field the documented schema."""
        document: dict[str, Any] = {
            "schema": SCHEMA,
            "status": self.status,
            "source": _fields(self.source),
            "rule": self.rule,
            "provider": self.provider,
            "context_nonce": self.context_nonce,
            "job_id": self.job_id,
            "route": self.route,
            "outputs": [_fields(output) for output in self.outputs],
            "error": _fields(self.error) if self.error else None,
            "submitted_at": self.submitted_at,
            "finished_at": self.finished_at,
            "recorded_at": self.recorded_at,
        }
        if not self.names_context:
            del document["context_nonce"]
        return document

    @classmethod
    def from_json(cls, document: object) -> ResultRecord | None:
        """The record a stored JSON document holds, or None when it is not one of ours: no
        object, another schema, an unknown status, or no source. Fields of the wrong type in
        an otherwise readable record are read as absent, as the bridge never writes them."""
        if not isinstance(document, Mapping) or document.get("schema") != SCHEMA:
            return None
        status, source = document.get("status"), document.get("source")
        if status not in _STATUSES or not isinstance(source, Mapping) or not all(
                isinstance(source.get(name), str) for name in ("storage", "location", "key")):
            return None
        error = document.get("error")
        outputs = document.get("outputs")
        return cls(
            status=status,
            source=RecordSource(str(source["storage"]), str(source["location"]),
                                str(source["key"]), _text(source.get("version")),
                                _count(source.get("size"))),
            rule=_text(document.get("rule")) or "",
            provider=_text(document.get("provider")) or "",
            context_nonce=_text(document.get("context_nonce")),
            job_id=_text(document.get("job_id")),
            route=_text(document.get("route")),
            outputs=tuple(RecordOutput(str(o.get("storage", "")), str(o.get("location", "")),
                                       _text(o.get("key")), str(o.get("filename", "")),
                                       _count(o.get("size")))
                          for o in (outputs if isinstance(outputs, list) else [])
                          if isinstance(o, Mapping)),
            error=RecordError(_text(error.get("task")), _text(error.get("code")),
                              _text(error.get("message"))) if isinstance(error, Mapping)
            else None,
            submitted_at=_text(document.get("submitted_at")),
            finished_at=_text(document.get("finished_at")),
            recorded_at=_text(document.get("recorded_at")),
            names_context="context_nonce" in document,
        )


def _fields(value: RecordSource | RecordOutput | RecordError) -> dict[str, Any]:
    return dict(vars(value))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _count(value: object) -> int | None:
    return value if type(value) is int else None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _source(ref: ObjectRef) -> RecordSource:
    return RecordSource(ref.storage, ref.location, ref.key, ref.version, ref.size)


def base_record(status: RecordStatus, ref: ObjectRef, rule: Rule, *,
                context_nonce: str | None = None) -> ResultRecord:
    return ResultRecord(status=status, source=_source(ref), rule=rule.name,
                        provider=rule.provider, context_nonce=context_nonce,
                        recorded_at=_now())


def submitting_record(ref: ObjectRef, rule: Rule, *, context_nonce: str, route: str,
                      issued_at: int) -> ResultRecord:
    """The record the earlier release wrote before it created the job; the reconciler and
    ``convbridge status`` still read such records. ``submitted_at`` is the context's own time
    (whole seconds), so the record with its route and nonce rebuilds the very context token
    the job is tagged with (the reconciler looks a job up by it)."""
    record = base_record("submitting", ref, rule, context_nonce=context_nonce)
    return replace(record, route=route,
                   submitted_at=datetime.fromtimestamp(issued_at, UTC).isoformat())


def submitted_record(ref: ObjectRef, rule: Rule, *, job_id: str, route: str,
                     context_nonce: str) -> ResultRecord:
    record = base_record("submitted", ref, rule, context_nonce=context_nonce)
    return replace(record, job_id=job_id, route=route, submitted_at=record.recorded_at)


def rejected_record(ref: ObjectRef, rule: Rule, *, code: str, message: str,
                    context_nonce: str | None = None) -> ResultRecord:
    """``context_nonce`` names the submission that rejected the object, so a duplicate
    delivery finds its claim completed by this record."""
    return replace(base_record("rejected", ref, rule, context_nonce=context_nonce),
                   error=RecordError(task=None, code=code, message=message))


def newer_submission(record: ResultRecord, nonce: str) -> bool:
    """The record belongs to a later submission of its source than the job context
    ``nonce``, so that context may not replace it. Records naming no context (or written by
    the earlier release, whose nonces tell no time) count as older than an ordered nonce; a
    context of the earlier release yields to any record of another context, as that
    release's own ``submitting`` record always came before its job."""
    if not record.names_context or record.context_nonce == nonce:
        return False
    ours = nonce_order(nonce)
    if ours is None:
        return True
    theirs = nonce_order(record.context_nonce)
    return theirs is not None and theirs > ours


def outcome_record(
    ref: ObjectRef,
    rule: Rule,
    outcome: JobOutcome,
    *,
    route: str,
    outputs: list[OutputFile],
    context_nonce: str,
    submitted_at: str | None = None,
) -> ResultRecord:
    record = base_record(outcome.status, ref, rule, context_nonce=context_nonce)
    return replace(
        record,
        provider=outcome.provider,
        job_id=outcome.job_id,
        route=route,
        outputs=tuple(_output(o, ref) for o in outputs),
        submitted_at=submitted_at,
        finished_at=(outcome.ended_at.isoformat(timespec="seconds")
                     if outcome.ended_at else record.recorded_at),
        error=RecordError(outcome.failed_task, outcome.code, outcome.message)
        if outcome.status == "failed" else None,
    )


def _output(output: OutputFile, ref: ObjectRef) -> RecordOutput:
    return RecordOutput(ref.storage, ref.location, output.key, output.filename, output.size)
