"""``submit(ref)``: start one conversion job for a stored object, or say why not.

A rejected object always leaves a failure report or a logged reason, one bad object never
stops the others in a batch, and a duplicate event never starts a job twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from convbridge import records
from convbridge.bridge import Bridge
from convbridge.claims import ClaimInProgress, SubmitClaim, now_ms, restored_result
from convbridge.context import JobContext, ordered_nonce, sign_context
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
from convbridge.pipeline.record_io import (
    RecordWrite,
    read_stored_record,
    write_failure,
    write_record,
)
from convbridge.planner import plan_route, refuse_unsent_input
from convbridge.records import newer_submission
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
    """The outcome of one submission. The earlier release stored it in the submit claim
    (powertools ``data``), which is how its claims still answer a duplicate."""

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
    return _Submitting(bridge, storage, rule, ref, claim_key).run(final_attempt=final_attempt)


#: takeovers of one upload's claim a delivery tries before it leaves the upload to the next
#: delivery (each lost one means another delivery took it over meanwhile)
TAKEOVER_ATTEMPTS = 3


@dataclass(frozen=True)
class _Prepared:
    """What a submission makes before it claims the upload (the claim names its context):
    the job to create, or why the object is rejected without one."""

    claim: SubmitClaim
    context: JobContext | None = None
    spec: JobSpec | None = None
    rejected: RejectedObject | None = None


@dataclass
class _Submitting:
    """One delivery's submission of one upload.

    The upload is claimed with one conditional write naming the job context; the job is
    created; its ``submitted`` record is written once, create-only, and that record completes
    the claim. A duplicate delivery learns the holder from its refused claim and reads the
    record: the holder's own record (or a newer submission's) answers it; none while the
    holder still runs means "later"; none after the holder's invocation ended means it died
    mid-submission, and the claim is taken over from exactly that holder, its job looked up
    by tag first where the provider can."""

    bridge: Bridge
    storage: Storage
    rule: Rule
    ref: ObjectRef
    claim_key: dict[str, Any]

    def run(self, *, final_attempt: bool) -> Submission:
        prepared = self._prepare()
        replacing: SubmitClaim | None = None
        for _ in range(TAKEOVER_ATTEMPTS):
            held = self.bridge.claims.claim_submission(self.claim_key, prepared.claim,
                                                       replacing=replacing)
            if held.ours:
                return self._submit_claimed(prepared, final_attempt=final_attempt)
            answer = self._answer_duplicate(held.claim)
            if answer is not None:
                return answer
            taken = self._look_up_interrupted(held.claim)
            if isinstance(taken, Submission):
                return taken
            replacing = taken
        raise ClaimInProgress("the submit claim was taken over by another delivery meanwhile")

    def _prepare(self) -> _Prepared:
        """The grants and the job context: made before the claim, which names the context,
        so a first upload claims once and is never updated."""
        issued_ns = time.time_ns()
        bare = SubmitClaim(nonce=ordered_nonce(issued_ns),
                           issued_at=issued_ns // 1_000_000_000)
        try:
            context, spec = _job_spec(self.bridge, self.storage, self.rule, self.ref)
        except RejectedObject as rejected:
            return _Prepared(bare, rejected=rejected)
        except GrantError as exc:
            # no grant could be minted at all (e.g. the storage's identity federation
            # failed): reported, never retried with a broader credential
            return _Prepared(bare, rejected=RejectedObject("GRANT_FAILED", str(exc)))
        except ProviderRejected as exc:  # an input the provider could never be sent
            return _Prepared(bare, rejected=_provider_refusal(exc))
        claim = SubmitClaim(nonce=context.nonce, route=context.route,
                            issued_at=context.issued_at, source_size=context.source_size)
        return _Prepared(claim, context, spec)

    def _answer_duplicate(self, holder: SubmitClaim) -> Submission | None:
        """A duplicate's answer from the holder's item and the record, or None when the
        holder's invocation ended with nothing recorded; ClaimInProgress while it runs."""
        ref, rule = self.ref, self.rule
        if holder.completed is not None:  # the earlier release's claim, with its result
            result = restored_result(holder.completed, ClaimedSubmission)
            return self._duplicate(f"already {result.status}", result.job_id)
        stored = read_stored_record(self.storage, ref.location, rule.result_key(ref.key))
        record = stored.record if stored else None
        if holder.nonce is not None and record is not None and record.names_context:
            if record.context_nonce == holder.nonce:
                return self._duplicate(f"already {record.status}", record.job_id)
            if newer_submission(record, holder.nonce):
                return self._duplicate("a newer submission of the key holds its record", None)
        if not holder.ended(now_ms()):
            raise ClaimInProgress("submit claim is held by another invocation")
        logger.warning("%s: the submission %s ended before it recorded a job", ref,
                       holder.nonce or "of the earlier release")
        return None

    def _look_up_interrupted(self, holder: SubmitClaim) -> Submission | SubmitClaim | None:
        """Take the claim of an interrupted submission over. Where the provider finds jobs by
        tag, the holder's own context is kept while its job is looked up (so whoever comes
        next sees the same context): a job found is recorded, never made twice. Returns the
        answer, or the claim the next attempt replaces (None: lost to another delivery)."""
        provider = self.bridge.provider(self.rule.provider)
        if not (provider.finds_jobs and holder.nonce and holder.route
                and holder.issued_at is not None):
            return holder  # nothing to look up: the fresh submission replaces it
        held = self.bridge.claims.claim_submission(self.claim_key, holder, replacing=holder)
        if not held.ours:
            return None  # another delivery took it over first; start again from its claim
        context = self._context_of(holder)
        job_id = provider.find_job(sign_context(context, self.bridge.context_key()))
        if job_id is None:
            logger.info("%s: no job carries the interrupted submission's tag", self.ref)
            return held.claim
        written = _write_submitted(self.storage, self.ref, self.rule, context, job_id)
        logger.info("%s: recorded job %s of an interrupted submission (%s)", self.ref, job_id,
                    written)
        return self._duplicate("the job of an interrupted submission, now recorded", job_id)

    def _context_of(self, holder: SubmitClaim) -> JobContext:
        ref, rule = self.ref, self.rule
        return JobContext(rule=rule.name, storage=ref.storage, location=ref.location,
                          key=ref.key, version=ref.version, output_key=rule.output_key(ref.key),
                          route=holder.route or "", issued_at=holder.issued_at or 0,
                          nonce=holder.nonce or "", source_size=holder.source_size)

    def _duplicate(self, reason: str, job_id: str | None) -> Submission:
        logger.info("duplicate delivery of %s: %s", self.ref, reason)
        return Submission(self.ref, "duplicate", reason, self.rule.name, job_id)

    def _submit_claimed(self, prepared: _Prepared, *, final_attempt: bool) -> Submission:
        nonce = prepared.claim.nonce or ""
        if prepared.rejected is not None:
            result = _reject(self.storage, self.ref, self.rule, prepared.rejected, nonce=nonce)
        else:
            assert prepared.context is not None and prepared.spec is not None
            result = self._start(prepared.context, prepared.spec, final_attempt=final_attempt)
        return Submission(self.ref, result.status, result.reason, self.rule.name,
                          result.job_id)

    def _start(self, context: JobContext, spec: JobSpec, *,
               final_attempt: bool) -> ClaimedSubmission:
        storage, ref, rule = self.storage, self.ref, self.rule
        provider = self.bridge.provider(rule.provider)
        created: list[str] = []
        recorded: list[RecordWrite] = []

        def record_job(job_id: str) -> None:
            created.append(job_id)
            recorded.append(_write_submitted(storage, ref, rule, context, job_id))
            if recorded[-1] == "newer" and provider.binds_before_start:
                # the job has not started, and never will: the record it would have settled
                # now belongs to a newer submission
                raise StaleWrite("a newer submission holds the result record")

        try:
            job_id = provider.start(spec, on_created=record_job)
            if spec.read_grant.kind == "upload":  # the bridge pushes the bytes itself
                provider.upload_input(job_id, spec,
                                      lambda: storage.read_stream(ref.location, ref.key))
        except StaleWrite as exc:
            logger.warning("%s: the result record changed before the job could start (%s); "
                           "the job was not started", ref, exc)
            return ClaimedSubmission("skipped", "the result record changed before the job "
                                                "could start")
        except (ProviderRejected, ProviderOutcomeUnknown, ProviderBusy,
                ProviderUnavailable) as exc:
            if not created and _reported_on_final(exc, final_attempt):
                return _reject(storage, ref, rule, _provider_refusal(exc), nonce=context.nonce)
            self._release_unless_unrecorded(context, created, recorded)
            raise
        except Exception:  # (an invocation that dies runs nothing more: its claim stays)
            self._release_unless_unrecorded(context, created, recorded)
            raise
        if recorded and recorded[-1] == "newer":
            logger.info("job %s of %s: a newer submission holds the record", job_id, ref)
        logger.info("submitted %s under rule %s as %s job %s (route %s)",
                    ref, rule.name, rule.provider, job_id, context.route)
        record_metric("JobsSubmitted", 1, rule=rule.name, provider=rule.provider)
        return ClaimedSubmission("submitted", job_id=job_id)

    def _release_unless_unrecorded(self, context: JobContext, created: list[str],
                                   recorded: list[RecordWrite]) -> None:
        """After trouble, a redelivery may submit at once, unless a job exists that no record
        names: the claim then stays, and once this invocation has ended the next delivery
        looks the job up by its tag before it makes another."""
        if created and not recorded:
            logger.warning("%s: job %s exists but is not recorded; the claim is kept",
                           self.ref, created[0])
            return
        self.bridge.claims.release_submission(self.claim_key, context.nonce)


def _reported_on_final(exc: Exception, final_attempt: bool) -> bool:
    """Refusals are reported at once; "not now" only on the event's final attempt (before
    that the event is delivered again)."""
    return final_attempt or not isinstance(exc, ProviderBusy | ProviderUnavailable)


def _provider_refusal(exc: Exception) -> RejectedObject:
    if isinstance(exc, ProviderRejected):
        return RejectedObject(exc.code or f"PROVIDER_HTTP_{exc.status}", exc.message)
    if isinstance(exc, ProviderOutcomeUnknown):
        # A job may exist (and run) that the bridge could not find: sending the create
        # again could convert twice, so this is reported, not delivered again.
        return RejectedObject("PROVIDER_OUTCOME_UNKNOWN", exc.message)
    if isinstance(exc, ProviderBusy):
        return RejectedObject("PROVIDER_BUSY", exc.message)
    assert isinstance(exc, ProviderUnavailable)
    return RejectedObject("PROVIDER_UNAVAILABLE", exc.message)


def _write_submitted(storage: Storage, ref: ObjectRef, rule: Rule, context: JobContext,
                     job_id: str) -> RecordWrite:
    """The ``submitted`` record, create-only: a callback that came first has written the
    settled record (``ours``), and a newer submission's record is left to it."""
    document = records.submitted_record(ref, rule, job_id=job_id, route=context.route,
                                        context_nonce=context.nonce)
    written = write_record(storage, ref.location, rule.result_key(ref.key), document,
                           marker=rule.name)
    if written == "ours":
        logger.info("job %s settled before its submission was recorded", job_id)
    return written


def _skip(ref: ObjectRef, reason: str) -> Submission:
    logger.info("skipped %s: %s", ref, reason)
    return Submission(ref, "skipped", reason)


def _reject(storage: Storage, ref: ObjectRef, rule: Rule, rejected: RejectedObject, *,
            nonce: str) -> ClaimedSubmission:
    logger.warning("rejected %s under rule %s: %s", ref, rule.name, rejected)
    document = records.rejected_record(ref, rule, code=rejected.code, message=rejected.message,
                                       context_nonce=nonce)
    write_failure(storage, rule, ref.location, ref.key, document,
                  write_result=lambda record: write_record(
                      storage, ref.location, rule.result_key(ref.key), record,
                      marker=rule.name) == "written")
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


def _job_spec(bridge: Bridge, storage: Storage, rule: Rule,
              ref: ObjectRef) -> tuple[JobContext, JobSpec]:
    """The job's context and everything its create request carries, grants included."""
    conversion = _conversion(rule, ref)
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
    return context, spec
