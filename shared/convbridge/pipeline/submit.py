"""``submit(ref)``: start one conversion job for a stored object, or say why not.

A rejected object always leaves a failure report or a logged reason, one bad object never
stops the others in a batch, and a duplicate event never starts a job twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from convbridge import records
from convbridge.bridge import Bridge
from convbridge.claims import ClaimInProgress
from convbridge.context import JobContext, sign_context
from convbridge.errors import (
    ConvbridgeError,
    GrantError,
    ProviderBusy,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderUnavailable,
    RejectedObject,
    StaleWrite,
    StorageError,
)
from convbridge.model import (
    OUTPUT_MARKER,
    ConversionSpec,
    JobSpec,
    ObjectRef,
    OutputTarget,
)
from convbridge.names import unsafe_key_reason
from convbridge.pipeline.record_io import write_failure
from convbridge.planner import plan_route, refuse_unsent_input
from convbridge.rules import Rule
from convbridge.storage.base import Storage
from convbridge.telemetry import record as record_metric

logger = logging.getLogger(__name__)


CALLBACK_PATH = "/callbacks/{provider}"


SubmissionStatus = Literal["submitted", "duplicate", "rejected", "skipped", "retry", "error"]


@dataclass(frozen=True)
class Submission:
    """What ``submit`` did with one object: ``submitted``, ``duplicate`` (an earlier delivery
    already handled it), ``rejected`` (failure report written), ``skipped`` (logged only),
    ``retry`` (transient trouble: deliver again) or ``error``. ``busy_wait`` is set on a
    ``retry`` when the provider (or the bridge's budget for it) said "not now": the seconds it
    asked to wait, 0.0 when it named none; the trigger defers such an event with backoff."""

    ref: ObjectRef
    status: SubmissionStatus
    reason: str = ""
    rule: str | None = None
    job_id: str | None = None
    busy_wait: float | None = None


def summarize(submissions: Iterable[Submission], **tallies: Any) -> dict[str, Any]:
    """A trigger's answer: how many objects ended in each status, the trigger's own
    ``tallies`` (the SFTP sweep's waiting, deferred...), then every object."""
    submissions = list(submissions)
    counts: dict[str, int] = {}
    for item in submissions:
        counts[item.status] = counts.get(item.status, 0) + 1
    return {
        "counts": counts,
        **tallies,
        "objects": [
            {"object": str(s.ref), "status": s.status, "reason": s.reason, "rule": s.rule,
             "job_id": s.job_id}
            for s in submissions
        ],
    }


@dataclass(frozen=True)
class ClaimedSubmission:
    """What the submit claim stores: the outcome of the one delivery that ran it."""

    status: Literal["submitted", "rejected", "skipped"]
    reason: str = ""
    job_id: str | None = None


def submit_all(bridge: Bridge, refs: Iterable[ObjectRef], *,
               final_attempt: bool = True) -> list[Submission]:
    """Submit each object on its own: trouble with one is reported and the rest go on."""
    results = []
    for ref in refs:
        try:
            results.append(submit(bridge, ref, final_attempt=final_attempt))
        except ClaimInProgress as exc:
            logger.info("%s: %s", ref, exc)
            results.append(Submission(ref, "retry", str(exc)))
        except ProviderBusy as exc:
            logger.info("%s: provider busy, the event will wait: %s", ref, exc)
            results.append(Submission(ref, "retry", str(exc), busy_wait=exc.retry_after or 0.0))
        except ProviderUnavailable as exc:
            logger.warning("%s: provider unavailable, will be delivered again: %s", ref, exc)
            results.append(Submission(ref, "retry", str(exc)))
        except ConvbridgeError as exc:
            logger.error("could not submit %s: %s", ref, exc)
            results.append(Submission(ref, "error", str(exc)))
    return results


def submit(bridge: Bridge, ref: ObjectRef, *, final_attempt: bool = True,
           attempt: str | None = None) -> Submission:
    """Start one job for ``ref`` unless it is the bridge's own write, matches no rule, or was
    already claimed. ``final_attempt=False`` lets a transient provider failure propagate
    (releasing the claim) so the event is delivered again instead of reported. ``attempt``
    names a deliberate resubmission, which gets a claim of its own."""
    rules = bridge.rules
    if rules.is_own_write(ref):
        return _skip(ref, "written by convbridge itself (loop guard)")
    unsafe = unsafe_key_reason(ref.key)
    if unsafe:
        return _skip(ref, f"key refused: {unsafe}")
    rule = rules.match(ref)
    if rule is None:
        covering = rules.covering(ref)
        if covering is None:
            return _skip(ref, "no rule covers this location and prefix")
        return _skip(ref, f"rule {covering.name!r} does not convert this suffix")
    conflict = rule.naming_conflict(ref.key)
    if conflict:
        return _skip(ref, f"key refused: {conflict}")
    storage = bridge.storage(ref.storage)
    derived = (rule.result_key(ref.key), rule.failure_key(ref.key), rule.output_key(ref.key))
    if max(len(k.encode("utf-8")) for k in derived) > storage.max_key_bytes:
        return _skip(ref, f"key too long: its record names would pass the storage's "
                          f"{storage.max_key_bytes}-byte limit")
    # The marker can only be on objects under a watched prefix that some rule also writes
    # into; otherwise the event's size and version suffice and a HEAD per upload is saved.
    if ref.size is None or ref.version is None or rules.may_hold_own_writes(rule):
        found = storage.stat(ref.location, ref.key)
        if found is None:
            return _skip(ref, "object no longer exists")
        if OUTPUT_MARKER in found.metadata:
            return _skip(ref, "carries the convbridge output marker (loop guard)")
        ref = replace(ref, size=found.size if ref.size is None else ref.size,
                      version=ref.version or found.version)
    claim_key = {"storage": ref.storage, "location": ref.location, "key": ref.key,
                 "version": ref.version, "rule": rule.name, "attempt": attempt}
    claim = bridge.claims.once(
        "submit", claim_key,
        lambda: _submit_claimed(bridge, storage, rule, ref, final_attempt=final_attempt),
        ClaimedSubmission,
    )
    result = claim.result
    if claim.replayed:
        logger.info("duplicate delivery of %s: already %s", ref, result.status)
        return Submission(ref, "duplicate", f"already {result.status}", rule.name,
                          result.job_id)
    return Submission(ref, result.status, result.reason, rule.name, result.job_id)


def _submit_claimed(bridge: Bridge, storage: Storage, rule: Rule, ref: ObjectRef, *,
                    final_attempt: bool) -> ClaimedSubmission:
    record = _SubmissionRecord(storage, ref, rule)
    try:
        conversion = _conversion(rule, ref)
        job_id, route = _start_job(bridge, storage, rule, ref, conversion, record)
    except RejectedObject as rejected:
        return _reject(storage, ref, rule, rejected)
    except GrantError as exc:
        # no grant could be minted at all (e.g. the storage's identity federation failed):
        # reported, never retried with a broader credential
        return _reject(storage, ref, rule, RejectedObject("GRANT_FAILED", str(exc)))
    except ProviderRejected as exc:
        return _reject(storage, ref, rule, RejectedObject(
            exc.code or f"PROVIDER_HTTP_{exc.status}", exc.message))
    except ProviderOutcomeUnknown as exc:
        # A job may exist (and run) that the bridge could not find: sending the create again
        # could convert twice, so this is reported, not delivered again.
        return _reject(storage, ref, rule, RejectedObject("PROVIDER_OUTCOME_UNKNOWN",
                                                          exc.message))
    except ProviderBusy as exc:
        if not final_attempt:
            raise
        return _reject(storage, ref, rule, RejectedObject("PROVIDER_BUSY", exc.message))
    except ProviderUnavailable as exc:
        if not final_attempt:
            raise
        return _reject(storage, ref, rule, RejectedObject("PROVIDER_UNAVAILABLE", exc.message))
    except StaleWrite as exc:
        # Only a job that has not started yet gets here (binds_before_start), and it never
        # will: the record it would have settled now belongs to another submission.
        logger.warning("%s: the result record changed before the job could start (%s); "
                       "the job was not started", ref, exc)
        return ClaimedSubmission("skipped", "the result record changed before the job could "
                                            "start")
    logger.info("submitted %s under rule %s as %s job %s (route %s)",
                ref, rule.name, rule.provider, job_id, route)
    record_metric("JobsSubmitted", 1, rule=rule.name, provider=rule.provider)
    return ClaimedSubmission("submitted", job_id=job_id)


@dataclass
class _SubmissionRecord:
    """The result record of one submission, on its way from ``submitting`` to ``submitted``.

    ``submitting`` (naming the job context) is written before the job exists: a provider may
    call back before the create request has answered, and the settled record must win, so
    ``submitted`` (naming the job) is written only over that very revision. For dialects that
    ``binds_before_start`` it is written before the job can run, and a failure to write it
    keeps the job from ever starting."""

    storage: Storage
    ref: ObjectRef
    rule: Rule
    revision: str | None = None

    def submitting(self, context: JobContext) -> None:
        self.revision = self.storage.write_json(
            self.ref.location, self.rule.result_key(self.ref.key),
            records.submitting_record(self.ref, self.rule, context_nonce=context.nonce,
                                      route=context.route,
                                      issued_at=context.issued_at).to_json(),
            marker=self.rule.name)

    def submitted(self, context: JobContext, job_id: str, *, before_start: bool) -> None:
        try:
            self.storage.write_json(
                self.ref.location, self.rule.result_key(self.ref.key),
                records.submitted_record(self.ref, self.rule, job_id=job_id,
                                         route=context.route,
                                         context_nonce=context.nonce).to_json(),
                marker=self.rule.name, if_revision=self.revision)
        except StaleWrite:
            if before_start:
                raise
            logger.info("job %s settled before its submission was recorded", job_id)


def _skip(ref: ObjectRef, reason: str) -> Submission:
    logger.info("skipped %s: %s", ref, reason)
    return Submission(ref, "skipped", reason)


def _reject(storage: Storage, ref: ObjectRef, rule: Rule,
            rejected: RejectedObject) -> ClaimedSubmission:
    logger.warning("rejected %s under rule %s: %s", ref, rule.name, rejected)
    document = records.rejected_record(ref, rule, code=rejected.code, message=rejected.message)
    write_failure(storage, rule, ref.location, ref.key, document)
    return ClaimedSubmission("rejected", str(rejected))


def _conversion(rule: Rule, ref: ObjectRef) -> ConversionSpec:
    if ref.size == 0:
        raise RejectedObject("EMPTY_OBJECT", "the object is empty (0 bytes)")
    if ref.size is not None and ref.size > rule.max_size_bytes:
        raise RejectedObject(
            "TOO_LARGE", f"the object is {ref.size} bytes, over the rule's limit of "
            f"{rule.max_size_bytes}")
    filename = ref.key.rsplit("/", 1)[-1]
    _, dot, extension = filename.rpartition(".")
    if not dot or not extension:
        raise RejectedObject("UNKNOWN_INPUT_FORMAT", "the key has no extension to tell its format")
    return ConversionSpec(input_format=extension.lower(), output_format=rule.output_format,
                          options=rule.options)


def _start_job(bridge: Bridge, storage: Storage, rule: Rule, ref: ObjectRef,
               conversion: ConversionSpec, record: _SubmissionRecord) -> tuple[str, str]:
    settings = bridge.settings
    if not settings.webhook_url:
        raise StorageError("CONVBRIDGE_WEBHOOK_URL is not set; providers could not call back")
    provider = bridge.provider(rule.provider)
    plan = plan_route(type(storage), type(provider), rule.read_grant,
                      hand_over_account=rule.hand_over_account)
    output = OutputTarget(storage=ref.storage, location=ref.location,
                          key=rule.output_key(ref.key))
    try:
        read_grant = storage.grant_read(ref, settings.read_grant_seconds, kind=plan.read_grant)
    except GrantError as exc:
        logger.info("%s: %s; importing from a presigned URL instead", ref, exc)
        read_grant = storage.grant_read(ref, settings.read_grant_seconds, kind="presigned_url")
    refuse_unsent_input(type(provider), read_grant.kind)
    write_grant = None
    if plan.route == "native":
        try:
            write_grant = storage.grant_write(output, settings.write_grant_seconds)
        except GrantError as exc:
            logger.info("%s: %s; relaying the output instead", ref, exc)
            plan = replace(plan, route="relay", write_grant=None)
    context = JobContext.new(rule=rule.name, storage=ref.storage, location=ref.location,
                             key=ref.key, version=ref.version, output_key=output.key,
                             route=plan.route, source_size=ref.size)
    spec = JobSpec(
        source=ref, rule=rule.name, conversion=conversion, route=plan.route,
        read_grant=read_grant, write_grant=write_grant, output=output,
        context_token=sign_context(context, bridge.context_key()),
        webhook_url=settings.webhook_url.rstrip("/") + CALLBACK_PATH.format(provider=provider.name),
        filename=ref.key.rsplit("/", 1)[-1],
    )
    logger.info("grants for %s: read %s (%s), write %s", ref, read_grant.scope, read_grant.kind,
                write_grant.scope if write_grant else "relay through the bridge")
    record.submitting(context)
    job_id = provider.start(spec, on_created=lambda created: record.submitted(
        context, created, before_start=provider.binds_before_start))
    if read_grant.kind == "upload":  # the storage cannot sign a URL: the bridge pushes the bytes
        provider.upload_input(job_id, spec, lambda: storage.read_stream(ref.location, ref.key))
    return job_id, plan.route
