"""No job left behind: settle the jobs whose callbacks never came.

A callback can be lost for good: the webhook was unreachable past the provider's retries, an
account webhook was deleted, or a provider disabled it after a 410. Such a job's result record
stays ``submitted``. The reconciler walks each rule's result records, and for every record
``submitted`` longer than its provider's ``settle_deadline_seconds`` it asks the provider, with
the API key, how the recorded job ended. A finished or failed job is settled through
:func:`convbridge.pipeline.settle`, under the same claim as its callback: outputs relayed,
records written once, and a callback arriving afterwards changes nothing. A job the provider no
longer knows (404) is settled as failed with ``JOB_LOST``; a job still running is asked again
next run.

A submission records its job once the job exists, so a trigger that dies between the create
and the record leaves no record at all: its submit claim stays with the dead invocation, and
the event's redelivery takes it over (``convbridge.pipeline.submit``), finding the job by its
tag where the provider can. The reconciler only sees the records that exist.

Records still ``submitting`` come from the earlier release, which wrote one just before
creating the job; past the deadline such a submission's trigger stopped between the two
writes, and the job may exist or not. The record names the context's nonce, route and time,
so the context token the job would be tagged with is signed again; where the provider looks
jobs up by tag (``finds_jobs``: CloudConvert v2, FreeConvert) a job found that way is settled
like a submitted one. Where it cannot, or no job carries the tag, the record is left
(``pending``) while the submission's claim may still be live (``claim_expiry_seconds`` from
``submitted_at``), as a redelivered trigger event may yet submit it; once the claim has
expired nothing will, and the source gets a failure report with code ``SUBMIT_INTERRUPTED``
(task ``submit``, no job id), which ``convbridge retry`` resubmits.

The job context settle needs is rebuilt from the record itself, which the bridge wrote and
which names the source, its version, the route and the context's nonce; the provider's answer
must carry a context token of ours with that very nonce before it is acted on.

Listings are bounded: a run reads at most ``max_records`` result records per rule. A run that
stops early leaves a cursor (:func:`cursor_key`, in the rule's results prefix: how many records
the walk has passed), and the next run goes on from there; a run that reaches the end sets it
back to the start. A run with nothing overdue makes no provider call at all.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from convbridge.bridge import Bridge
from convbridge.claims import ClaimInProgress
from convbridge.context import JobContext, sign_context, verify_context
from convbridge.errors import ConvbridgeError, ProviderJobUnknown, StorageError
from convbridge.model import JobOutcome, ObjectRef
from convbridge.pipeline import Accepted, settle
from convbridge.providers import PROVIDERS
from convbridge.records import ResultRecord
from convbridge.rules import Rule
from convbridge.storage.base import Storage
from convbridge.telemetry import record as record_metric

logger = logging.getLogger(__name__)

#: how the cursor a run that stopped early leaves in a rule's results prefix is named (not a
#: record: no ``.json`` suffix; written with the bridge's marker like every record)
CURSOR_PREFIX = ".convbridge-reconcile-"
#: result records read per rule and run
DEFAULT_MAX_RECORDS = 5000
#: a run stops taking new records once the invocation has less time than this left
MARGIN_MS = 30_000

ReconcileStatus = Literal["settled", "duplicate", "running", "pending", "skipped", "error"]
#: the failure code of a submission interrupted before its job was recorded and found
SUBMIT_INTERRUPTED = "SUBMIT_INTERRUPTED"
#: the record statuses the reconciler settles
OVERDUE_STATUSES = frozenset({"submitting", "submitted"})


@dataclass(frozen=True)
class Reconciled:
    """What the reconciler did with one overdue record: ``settled`` (outcome written, JOB_LOST
    and SUBMIT_INTERRUPTED included), ``duplicate`` (a callback settled it first), ``running``
    (asked again next run), ``pending`` (a ``submitting`` record with no job found, left to
    the trigger's redelivery while its claim may be live), ``skipped`` (not ours to settle)
    or ``error`` (transient trouble; next run)."""

    record_key: str
    rule: str
    job_id: str | None
    status: ReconcileStatus
    outcome: str | None = None
    reason: str = ""


@dataclass
class Reconciliation:
    """One run: how many records were read, and what happened to the overdue ones."""

    examined: int = 0
    items: list[Reconciled] = field(default_factory=list)
    #: rules whose walk stopped early and goes on from a cursor next run
    resumed_later: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.status] = counts.get(item.status, 0) + 1
        return {"examined": self.examined, "overdue": len(self.items), **counts,
                "resumed_later": list(self.resumed_later)}


def reconcile(bridge: Bridge, *, rule_name: str | None = None, older_than: int | None = None,
              now: datetime | None = None, max_records: int = DEFAULT_MAX_RECORDS,
              remaining_ms: Callable[[], int] | None = None) -> Reconciliation:
    """Settle every job recorded ``submitted`` or ``submitting`` for longer than its
    provider's deadline
    (``older_than`` seconds instead, when given). ``now`` is the moment ages are measured
    from. Each record is handled on its own: trouble with one is reported and the rest go
    on."""
    moment = now or datetime.now(UTC)
    report = Reconciliation()
    for rule in bridge.rules.rules:
        if rule_name and rule.name != rule_name:
            continue
        deadline = older_than if older_than is not None else (
            PROVIDERS.load(rule.provider).settle_deadline_seconds)
        _walk(bridge, rule, report, deadline=deadline, now=moment, max_records=max_records,
              remaining_ms=remaining_ms)
    return report


def _walk(bridge: Bridge, rule: Rule, report: Reconciliation, *, deadline: int, now: datetime,
          max_records: int, remaining_ms: Callable[[], int] | None) -> None:
    storage = bridge.storage(rule.storage)
    cursor = cursor_key(rule)
    passed = _read_cursor(storage, rule.location, cursor)
    position, read, stopped = 0, 0, False
    for key in _record_keys(storage, rule):
        position += 1
        if position <= passed:
            continue
        if read >= max_records or (remaining_ms is not None and remaining_ms() < MARGIN_MS):
            stopped = True
            break
        read += 1
        item = _reconcile_record(bridge, rule, storage, key, deadline=deadline, now=now)
        if item is not None:
            report.items.append(item)
    report.examined += read
    if stopped:
        storage.write_json(rule.location, cursor, {"passed": position - 1},
                           marker=rule.name)
        report.resumed_later.append(rule.name)
        logger.info("rule %s: stopped after %d records; the next run goes on from there",
                    rule.name, position - 1)
    elif passed:
        # set back, not deleted: the function may delete nothing outside the watched prefix
        storage.write_json(rule.location, cursor, {"passed": 0}, marker=rule.name)


def cursor_key(rule: Rule) -> str:
    """Where the walk of ``rule`` keeps its cursor; one per rule, should rules share a results
    prefix."""
    return f"{rule.results_prefix}{CURSOR_PREFIX}{rule.name}"


def _record_keys(storage: Storage, rule: Rule) -> Iterator[str]:
    """The rule's result record keys, as the storage lists them (lazily, page by page)."""
    for key in storage.list_keys(rule.location, rule.results_prefix):
        if key.endswith(".json"):
            yield key


def _read_cursor(storage: Storage, location: str, key: str) -> int:
    document = _read_json(storage, location, key)
    passed = (document or {}).get("passed")
    return passed if isinstance(passed, int) and not isinstance(passed, bool) and passed > 0 else 0


def _reconcile_record(bridge: Bridge, rule: Rule, storage: Storage, key: str, *,
                      deadline: int, now: datetime) -> Reconciled | None:
    record = ResultRecord.from_json(_read_json(storage, rule.location, key))
    if record is None or record.status not in OVERDUE_STATUSES or record.rule != rule.name:
        return None  # settled, or another rule's record (its own walk sees to it)
    submitted_at = _time(record.submitted_at)
    if submitted_at is None or (now - submitted_at).total_seconds() < deadline:
        return None
    job_id = record.job_id
    context = _context(rule, key, record, submitted_at)
    if context is not None and record.status == "submitting":
        try:
            return _reconcile_submitting(bridge, rule, key, context,
                                         age=(now - submitted_at).total_seconds())
        except ClaimInProgress as exc:
            return Reconciled(key, rule.name, None, "running", reason=str(exc))
        except ConvbridgeError as exc:
            logger.warning("%s: interrupted submission not reconciled: %s", key, exc)
            return Reconciled(key, rule.name, None, "error", reason=str(exc))
    if context is None or not job_id:
        logger.warning("%s: a submitted record that names no job context or job of rule %s",
                       key, rule.name)
        return Reconciled(key, rule.name, None, "skipped", reason="the record is not one of "
                          "this rule's submitted records")
    try:
        return _settle_overdue(bridge, rule, key, job_id, context)
    except ClaimInProgress as exc:  # a callback is settling it right now
        return Reconciled(key, rule.name, job_id, "running", reason=str(exc))
    except ConvbridgeError as exc:
        logger.warning("%s: job %s not reconciled: %s", key, job_id, exc)
        return Reconciled(key, rule.name, job_id, "error", reason=str(exc))


def _settle_overdue(bridge: Bridge, rule: Rule, key: str, job_id: str,
                    context: JobContext) -> Reconciled:
    provider = bridge.provider(rule.provider)
    try:
        outcome = provider.fetch_job(job_id)
    except ProviderJobUnknown:
        outcome = JobOutcome(provider=rule.provider, job_id=job_id, status="failed",
                             event="reconcile", failed_task="job", code="JOB_LOST",
                             message=f"{rule.provider} no longer knows job {job_id}, and its "
                                     "callback never came")
    else:
        if outcome is None:
            logger.info("%s: job %s is still running", key, job_id)
            return Reconciled(key, rule.name, job_id, "running")
        if outcome.job_id != job_id or not _carries(bridge, outcome, context):
            logger.warning("%s: the provider's job %s carries no context of this record",
                           key, job_id)
            return Reconciled(key, rule.name, job_id, "skipped",
                              reason="the provider's job carries another job context")
        outcome = replace(outcome, event="reconcile")
    completion = settle(bridge, Accepted(outcome, context, rule))
    status: ReconcileStatus = ("settled" if completion.status == "recorded" else
                               "duplicate" if completion.status == "duplicate" else "skipped")
    if status == "settled":
        logger.info("%s: job %s settled by the reconciler as %s", key, job_id,
                    completion.outcome)
        record_metric("JobsReconciled", 1, rule=rule.name, provider=rule.provider)
    return Reconciled(key, rule.name, job_id, status, completion.outcome)


def _reconcile_submitting(bridge: Bridge, rule: Rule, key: str, context: JobContext, *,
                          age: float) -> Reconciled:
    """A submission the earlier release recorded ``submitting`` and never ``submitted``: its
    job found by tag and settled, left while a redelivery may still submit it, or reported
    interrupted."""
    provider = bridge.provider(rule.provider)
    if provider.finds_jobs:
        job_id = provider.find_job(sign_context(context, bridge.context_key()))
        if job_id is not None:
            logger.info("%s: the interrupted submission's job %s was found by its tag", key,
                        job_id)
            return _settle_overdue(bridge, rule, key, job_id, context)
    if age < bridge.settings.claim_expiry_seconds:
        logger.info("%s: no job of an interrupted submission; left to the trigger while its "
                    "claim may be live", key)
        return Reconciled(key, rule.name, None, "pending",
                          reason="no job found; the submission's claim may still be live")
    found = "no job carries its tag" if provider.finds_jobs else (
        f"{rule.provider} cannot look a job up by its tag")
    outcome = JobOutcome(provider=rule.provider, job_id="", status="failed", event="reconcile",
                         failed_task="submit", code=SUBMIT_INTERRUPTED,
                         message=f"the submission stopped before its job was recorded and "
                                 f"{found}; retry to convert the source")
    completion = settle(bridge, Accepted(outcome, context, rule))
    logger.info("%s: interrupted submission reported as %s", key, SUBMIT_INTERRUPTED)
    status: ReconcileStatus = ("settled" if completion.status == "recorded" else
                               "duplicate" if completion.status == "duplicate" else "skipped")
    return Reconciled(key, rule.name, None, status, completion.outcome)


def _carries(bridge: Bridge, outcome: JobOutcome, context: JobContext) -> bool:
    """The provider's job holds a context token of ours naming this record's context."""
    try:
        found = verify_context(outcome.context_token, bridge.context_key(),
                               max_age_seconds=bridge.settings.context_max_age_seconds)
    except ConvbridgeError:
        return False
    return found.nonce == context.nonce and found.key == context.key


def _context(rule: Rule, key: str, record: ResultRecord,
             submitted_at: datetime) -> JobContext | None:
    """The job context of a submitted record of ``rule``, rebuilt from the record: the bridge
    wrote it, so it is trusted as the signed context was."""
    source, nonce, route = record.source, record.context_nonce, record.route
    if nonce is None or route not in {"native", "relay"} or record.rule != rule.name:
        return None
    ref = ObjectRef(storage=source.storage, location=source.location, key=source.key)
    # the record must be where this rule writes the record of that very source
    if (ref.storage, ref.location) != (rule.storage, rule.location) or not rule.covers(
            ref) or rule.result_key(ref.key) != key:
        return None
    return JobContext(rule=rule.name, storage=ref.storage, location=ref.location, key=ref.key,
                      version=source.version, output_key=rule.output_key(ref.key),
                      route=str(route), issued_at=int(submitted_at.timestamp()), nonce=nonce,
                      source_size=source.size)


def _read_json(storage: Storage, location: str, key: str) -> dict[str, Any] | None:
    try:
        document = json.loads(storage.read_bytes(location, key))
    except (StorageError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run_scheduled(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The reconciler function's body: the schedule's event carries nothing it needs beyond
    its arrival. Records it could not reconcile now fail the invocation (what alarms watch)
    once the rest is done; the next run tries them again."""
    from convbridge import runtime

    report = runtime.run_scheduled(event, context, "reconcile",
                                   lambda current, remaining: reconcile(current,
                                                                        remaining_ms=remaining))
    summary = report.summary()
    logger.info("reconcile summary: %s", json.dumps(summary))
    errors = [f"{item.record_key}: {item.reason}" for item in report.items
              if item.status == "error"]
    if errors:
        raise StorageError("records not reconciled: " + "; ".join(errors[:20]))
    return summary
