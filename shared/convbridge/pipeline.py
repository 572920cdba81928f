"""The only orchestration code: ``submit(ref)`` starts a job for a stored object, and
``accept`` / ``settle`` (together ``complete``) turn a provider callback into records.

Everything else (events, rules, grants, provider dialects, records, claims) is a part; this
module decides the order and what happens when a part says no. A rejected object always
leaves a failure report or a logged reason, one bad object never stops the others in a
batch, and a duplicate event or callback never starts or writes anything twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from convbridge import records
from convbridge.bridge import Bridge
from convbridge.claims import ClaimInProgress
from convbridge.context import JobContext, sign_context, verify_context
from convbridge.errors import (
    CallbackError,
    CallbackSignatureError,
    CallbackTooLarge,
    ContextError,
    ConvbridgeError,
    GrantError,
    OutputRefused,
    OutputTooLarge,
    ProviderOutcomeUnknown,
    ProviderRejected,
    ProviderUnavailable,
    RejectedObject,
    StaleWrite,
    StorageError,
)
from convbridge.http import HostPattern, open_download
from convbridge.model import (
    OUTPUT_MARKER,
    SOURCE_TAG,
    ConversionSpec,
    JobOutcome,
    JobSpec,
    ObjectRef,
    OutputFile,
    OutputTarget,
    source_tag,
)
from convbridge.names import unsafe_filename_reason
from convbridge.names import unsafe_key_reason as unsafe_key_reason  # the sweep imports it here
from convbridge.planner import plan_route
from convbridge.providers.base import TOKEN_PARAMETER, callback_query
from convbridge.rules import Rule
from convbridge.storage.base import Storage
from convbridge.telemetry import record as record_metric

logger = logging.getLogger(__name__)

CALLBACK_PATH = "/callbacks/{provider}"
#: downloads of one output tried before the relay gives up and reports the failure
RELAY_ATTEMPTS = 3
RELAY_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Submission:
    """What ``submit`` did with one object: ``submitted``, ``duplicate`` (an earlier delivery
    already handled it), ``rejected`` (failure report written), ``skipped`` (logged only),
    ``retry`` (transient trouble: deliver again) or ``error``."""

    ref: ObjectRef
    status: str
    reason: str = ""
    rule: str | None = None
    job_id: str | None = None


@dataclass(frozen=True)
class Accepted:
    """A callback proven genuine: the provider's outcome and our own context for it."""

    outcome: JobOutcome
    context: JobContext
    rule: Rule


@dataclass(frozen=True)
class Completion:
    """What ``settle`` did: ``recorded``, ``duplicate`` (the context was settled already) or
    ``ignored`` (nothing to do, or the record now belongs to a newer submission)."""

    status: str  # "recorded" | "ignored" | "duplicate"
    job_id: str | None = None
    outcome: str | None = None
    record_key: str | None = None


# ----------------------------------------------------------------------------- submit


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
    result = bridge.claims.once(
        "submit", claim_key,
        lambda: _submit_claimed(bridge, storage, rule, ref, final_attempt=final_attempt),
    )
    if result.get("replayed"):
        logger.info("duplicate delivery of %s: already %s", ref, result["status"])
        return Submission(ref, "duplicate", f"already {result['status']}", rule.name,
                          result.get("job_id"))
    return Submission(ref, result["status"], result.get("reason", ""), rule.name,
                      result.get("job_id"))


def _submit_claimed(bridge: Bridge, storage: Storage, rule: Rule, ref: ObjectRef, *,
                    final_attempt: bool) -> dict[str, Any]:
    record = _SubmissionRecord(storage, ref, rule)
    try:
        conversion = _conversion(rule, ref)
        job_id, route = _start_job(bridge, storage, rule, ref, conversion, record)
    except RejectedObject as rejected:
        return _reject(storage, ref, rule, rejected)
    except ProviderRejected as exc:
        return _reject(storage, ref, rule, RejectedObject(
            exc.code or f"PROVIDER_HTTP_{exc.status}", exc.message))
    except ProviderOutcomeUnknown as exc:
        # A job may exist (and run) that the bridge could not find: sending the create again
        # could convert twice, so this is reported, not delivered again.
        return _reject(storage, ref, rule, RejectedObject("PROVIDER_OUTCOME_UNKNOWN",
                                                          exc.message))
    except ProviderUnavailable as exc:
        if not final_attempt:
            raise
        return _reject(storage, ref, rule, RejectedObject("PROVIDER_UNAVAILABLE", exc.message))
    except StaleWrite as exc:
        # Only a job that has not started yet gets here (binds_before_start), and it never
        # will: the record it would have settled now belongs to another submission.
        logger.warning("%s: the result record changed before the job could start (%s); "
                       "the job was not started", ref, exc)
        return {"status": "skipped", "reason": "the result record changed before the job "
                                               "could start"}
    logger.info("submitted %s under rule %s as %s job %s (route %s)",
                ref, rule.name, rule.provider, job_id, route)
    record_metric("JobsSubmitted", 1, rule=rule.name, provider=rule.provider)
    return {"status": "submitted", "job_id": job_id}


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
            records.submitting_record(self.ref, self.rule, context_nonce=context.nonce),
            marker=self.rule.name)

    def submitted(self, context: JobContext, job_id: str, *, before_start: bool) -> None:
        try:
            self.storage.write_json(
                self.ref.location, self.rule.result_key(self.ref.key),
                records.submitted_record(self.ref, self.rule, job_id=job_id,
                                         route=context.route, context_nonce=context.nonce),
                marker=self.rule.name, if_revision=self.revision)
        except StaleWrite:
            if before_start:
                raise
            logger.info("job %s settled before its submission was recorded", job_id)


def _skip(ref: ObjectRef, reason: str) -> Submission:
    logger.info("skipped %s: %s", ref, reason)
    return Submission(ref, "skipped", reason)


def _reject(storage: Storage, ref: ObjectRef, rule: Rule,
            rejected: RejectedObject) -> dict[str, Any]:
    logger.warning("rejected %s under rule %s: %s", ref, rule.name, rejected)
    document = records.rejected_record(ref, rule, code=rejected.code, message=rejected.message)
    _write_failure(storage, rule, ref.location, ref.key, document)
    return {"status": "rejected", "reason": str(rejected)}


def _write_failure(storage: Storage, rule: Rule, location: str, key: str,
                   document: Mapping[str, Any]) -> None:
    """Failure report, result record, then the rule's failure policy for the source."""
    storage.write_json(location, rule.failure_key(key), document, marker=rule.name)
    storage.write_json(location, rule.result_key(key), document, marker=rule.name)
    if rule.on_failure in {"copy", "move"} and storage.stat(location, key) is not None:
        storage.copy(location, key, rule.failed_source_key(key))
        if rule.on_failure == "move":
            storage.delete(location, key)
        logger.info("%s %s to %s", "moved" if rule.on_failure == "move" else "copied", key,
                    rule.failed_source_key(key))


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
    write_grant = None
    if plan.route == "native":
        try:
            write_grant = storage.grant_write(output, settings.write_grant_seconds)
        except GrantError as exc:
            logger.info("%s: %s; relaying the output instead", ref, exc)
            plan = replace(plan, route="relay", write_grant=None)
    context = JobContext.new(rule=rule.name, storage=ref.storage, location=ref.location,
                             key=ref.key, version=ref.version, output_key=output.key,
                             route=plan.route)
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


def retry_failures(bridge: Bridge, rule_name: str | None = None) -> list[Submission]:
    """Resubmit every source named by a failure report (``convbridge retry``). A source the
    failure policy moved aside is put back first. A report is removed once its source is
    submitted again, so running this twice does not start two jobs."""
    submissions = []
    for rule in bridge.rules.rules:
        if rule_name and rule.name != rule_name:
            continue
        storage = bridge.storage(rule.storage)
        for report_key in list(storage.list_keys(rule.location, rule.failures_prefix)):
            report = _read_record(storage, rule.location, report_key) if report_key.endswith(
                ".json") else None
            if not report or report.get("schema") != records.SCHEMA:
                continue  # a source moved aside, not a report
            key = str(report["source"]["key"])
            moved = rule.failed_source_key(key)
            if storage.stat(rule.location, moved) is not None:
                storage.copy(rule.location, moved, key)
                storage.delete(rule.location, moved)
            if storage.stat(rule.location, key) is None:
                logger.warning("cannot retry %s: the source is gone", key)
                submissions.append(Submission(ObjectRef(rule.storage, rule.location, key),
                                              "skipped", "the source is gone", rule.name))
                continue
            submission = submit(bridge, ObjectRef(rule.storage, rule.location, key),
                                attempt=str(report.get("recorded_at")))
            if submission.status == "submitted":
                storage.delete(rule.location, report_key)
            submissions.append(submission)
    return submissions


# --------------------------------------------------------------------------- callbacks


def complete(bridge: Bridge, provider_name: str, headers: Mapping[str, str],
             body: bytes) -> Completion:
    accepted = accept(bridge, provider_name, headers, body)
    if accepted is None:
        return Completion("ignored")
    return settle(bridge, accepted)


def accept(bridge: Bridge, provider_name: str, headers: Mapping[str, str],
           body: bytes, *, confirm: bool = True) -> Accepted | None:
    """Prove a callback genuine, fast and without writing anything. Raises CallbackError (with
    the HTTP status to answer); returns None for events that need no action. ``confirm=False``
    stops after the cheap checks, before unsigned dialects ask the provider what happened (a
    request that can outlast the provider's callback timeout, Online-Convert's 3 s): the
    callback is then queued, and confirmed where it is settled."""
    if len(body) > bridge.settings.max_callback_bytes:
        raise CallbackTooLarge(f"callback body of {len(body)} bytes is over the limit")
    if provider_name not in {rule.provider for rule in bridge.rules.rules}:
        raise ContextError(f"no rule uses provider {provider_name!r}")
    provider = bridge.provider(provider_name)
    max_age = bridge.settings.context_max_age_seconds
    # The cheap checks come before any parsing: a token in the callback URL (how dialects
    # that sign nothing prove a callback ours) is verified with our HMAC here, and signed
    # dialects check the provider's HMAC over the raw bytes first thing in accept_callback.
    url_token = callback_query(headers).get(TOKEN_PARAMETER)
    url_context = None if url_token is None else verify_context(
        url_token, bridge.context_key(), max_age_seconds=max_age)
    try:
        outcome = provider.accept_callback(headers, body)
    except RecursionError as exc:  # a dialect's parser meeting absurd nesting
        raise CallbackError("callback body is nested too deeply") from exc
    if outcome is None:
        return None
    context = url_context if url_context and outcome.context_token == url_token else (
        verify_context(outcome.context_token, bridge.context_key(), max_age_seconds=max_age))
    rule = _rule_for(bridge, context, provider_name)
    recorded = (_refuse_unrecorded_job(bridge, rule, context, outcome.job_id)
                if provider.binds_before_start else None)
    if not confirm or recorded == "settled":
        # A settled context needs no word from the provider: settle() answers duplicate from
        # the record, so a late callback of a job the provider has since forgotten is not
        # retried against a 404 until the queue gives up.
        return Accepted(outcome, context, rule)
    # Only once our own HMAC verified: unsigned dialects fetch the real outcome here.
    confirmed = provider.confirm(outcome, headers)
    if confirmed is None:
        return None
    if confirmed.context_token != outcome.context_token:
        raise ContextError("the provider's job belongs to another job context")
    return Accepted(confirmed, context, rule)


def _refuse_unrecorded_job(bridge: Bridge, rule: Rule, context: JobContext,
                           job_id: str) -> str:
    """Refuse, with one read of the result record, a callback naming another job than the
    one recorded for its context: dialects that ``binds_before_start`` record the job before
    it can run, so a leaked token cannot settle (or even queue) a job of someone else's."""
    storage = bridge.storage(context.storage)
    record = _read_record(storage, context.location, rule.result_key(context.key))
    recorded = _recorded_job(record, context.nonce)
    if recorded.state in {"bound", "settled"} and recorded.job_id != job_id:
        raise CallbackSignatureError(f"job {job_id} is not the job the bridge created for this "
                                     "context")
    if recorded.state == "unbound":
        raise CallbackSignatureError(f"job {job_id} was not recorded for this context")
    return recorded.state


def settle(bridge: Bridge, accepted: Accepted) -> Completion:
    """Write the outcome of an accepted callback: once per job context, and only for the job
    the bridge created for it, however often and however late the callback comes. The claim
    is keyed on the context, not on the job a caller names, and the result record itself
    names the context and its job, so it still stops a second settle once the claim expired.
    A callback for another job than the recorded one is refused (CallbackSignatureError)."""
    outcome = accepted.outcome
    result = bridge.claims.once(
        "settle", {"context": accepted.context.nonce},
        lambda: _settle_claimed(bridge, accepted),
    )
    if result["status"] == "ignored":
        return Completion("ignored", outcome.job_id)
    if result["job_id"] != outcome.job_id:
        raise CallbackSignatureError(f"the job context was settled by job {result['job_id']}, "
                                     f"not job {outcome.job_id}")
    if result.get("replayed") or result["status"] == "duplicate":
        logger.info("job %s already settled as %s; %s callback changes nothing",
                    outcome.job_id, result["outcome"], outcome.event or "repeated")
        return Completion("duplicate", outcome.job_id, result["outcome"], result["record_key"])
    return Completion("recorded", outcome.job_id, result["outcome"], result["record_key"])


@dataclass(frozen=True)
class _Recorded:
    """What the result record says about one job context: no job recorded for it yet
    (``unbound``), its job recorded (``bound``), settled by that job (``settled``), or the
    record now belongs to another submission of the same source (``other``)."""

    state: Literal["unbound", "bound", "settled", "other"]
    job_id: str | None = None


def _recorded_job(record: Mapping[str, Any] | None, nonce: str) -> _Recorded:
    if record is None:
        return _Recorded("unbound")
    job_id = record.get("job_id") if isinstance(record.get("job_id"), str) else None
    final = record.get("status") in records.FINAL_STATUSES
    if "context_nonce" not in record:
        # written before records named their context: the job id is all it tells
        return _Recorded("settled" if final else "bound", job_id) if job_id else _Recorded(
            "unbound")
    if record["context_nonce"] != nonce:
        return _Recorded("other")
    if final:
        return _Recorded("settled", job_id)
    return _Recorded("bound", job_id) if job_id else _Recorded("unbound")


def _settle_claimed(bridge: Bridge, accepted: Accepted) -> dict[str, Any]:
    outcome, context, rule = accepted.outcome, accepted.context, accepted.rule
    storage = bridge.storage(context.storage)
    result_key = rule.result_key(context.key)
    previous = _read_record(storage, context.location, result_key)
    recorded = _recorded_job(previous, context.nonce)
    superseded = {"status": "ignored", "job_id": outcome.job_id, "outcome": None,
                  "record_key": result_key}
    if recorded.state == "other":
        logger.info("job %s: the record of %s belongs to a newer submission; its callback "
                    "changes nothing", outcome.job_id, context.key)
        return superseded
    if recorded.job_id is not None and recorded.job_id != outcome.job_id:
        raise CallbackSignatureError(f"job {outcome.job_id} is not the job the bridge created "
                                     "for this context")
    if recorded.state == "settled":
        return {"status": "duplicate", "job_id": outcome.job_id,
                "outcome": (previous or {}).get("status"), "record_key": result_key}
    if recorded.job_id is None and bridge.provider(rule.provider).binds_before_start:
        # the bridge records these jobs before they can run: an unrecorded one is not ours
        raise CallbackSignatureError(f"job {outcome.job_id} was not recorded for this context")
    source = ObjectRef(storage=context.storage, location=context.location, key=context.key,
                       version=context.version, size=(previous or {}).get("source", {}).get("size"))
    outputs: list[OutputFile] = []
    if outcome.status == "finished":
        try:
            outputs = _collect_outputs(bridge, storage, rule, context, outcome)
        except StorageError as exc:
            outcome = replace(outcome, status="failed", failed_task="relay",
                              code=exc.code if isinstance(exc, OutputRefused)
                              else "OUTPUT_UNAVAILABLE", message=str(exc))
    # A relay can take minutes, long enough for the source to be uploaded and submitted
    # again: that newer submission's record (and source) must not be overwritten or moved.
    current = _read_record(storage, context.location, result_key)
    if _recorded_job(current, context.nonce).state == "other":
        logger.info("job %s: a newer submission of %s took its record while it settled; the "
                    "record is left to it", outcome.job_id, context.key)
        return superseded
    document = records.outcome_record(source, rule, outcome, route=context.route,
                                      outputs=outputs, context_nonce=context.nonce,
                                      submitted_at=(previous or {}).get("submitted_at"))
    if outcome.status == "failed":
        _write_failure(storage, rule, context.location, context.key, document)
    else:
        storage.write_json(context.location, result_key, document, marker=rule.name)
    storage.after_settle(context.location, context.key, outcome.status)
    logger.info("job %s for %s %s; record %s", outcome.job_id, source, outcome.status, result_key)
    record_metric("JobsFinished" if outcome.status == "finished" else "JobsFailed", 1,
                  rule=rule.name, provider=rule.provider)
    if outcome.ended_at is not None:
        latency = (datetime.now(UTC) - outcome.ended_at).total_seconds() * 1000
        record_metric("CallbackLatencyMs", max(latency, 0.0), unit="Milliseconds",
                      provider=rule.provider)
    return {"status": "recorded", "job_id": outcome.job_id, "outcome": outcome.status,
            "record_key": result_key}


def _rule_for(bridge: Bridge, context: JobContext, provider_name: str) -> Rule:
    """The context was signed by us, but rules change: it must still name a rule that covers
    the same place and would write to the same output key."""
    rule = bridge.rules.get(context.rule)
    source = ObjectRef(storage=context.storage, location=context.location, key=context.key)
    if (
        rule is None
        or rule.provider != provider_name
        or not rule.covers(source)
        or rule.output_key(context.key) != context.output_key
    ):
        raise ContextError("job context no longer matches a configured rule")
    return rule


def _read_record(storage: Storage, location: str, key: str) -> dict[str, Any] | None:
    if storage.stat(location, key) is None:
        return None
    try:
        document = json.loads(storage.read_bytes(location, key))
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _collect_outputs(bridge: Bridge, storage: Storage, rule: Rule, context: JobContext,
                     outcome: JobOutcome) -> list[OutputFile]:
    if not outcome.outputs and context.route == "native":
        # some export tasks report no file list; the one output is where our grant allowed
        found = storage.stat(context.location, context.output_key)
        if found is not None:
            name = context.output_key.rsplit("/", 1)[-1]
            return [OutputFile(filename=name, size=found.size or 0, key=context.output_key)]
    if len(outcome.outputs) == 1 and context.route == "native":
        _move_lone_output(storage, context, outcome.outputs[0])
    if not outcome.outputs:
        raise StorageError("the provider reported no output files")
    collected = []
    for output, key in zip(outcome.outputs, output_keys(context.output_key, outcome.outputs),
                           strict=True):
        if context.route == "relay":
            size = relay_output(bridge.http, storage, context.location, key, output,
                                marker=context.rule, policy=relay_policy(bridge, rule),
                                source=source_tag(context.location, context.key))
        else:
            found = storage.stat(context.location, key)
            if found is None:
                raise StorageError(f"the provider reported {output.filename} but {key} is missing")
            size = found.size or 0
        collected.append(OutputFile(filename=output.filename, size=size, key=key))
    return collected


def _move_lone_output(storage: Storage, context: JobContext, output: OutputFile) -> None:
    """A conversion that might have given several files is exported into the output folder
    (``providers.cloudconvert._export_s3``); when it gave one, that file belongs at the output
    key, replacing an earlier version's output there as an export to the key itself would.
    A server-side copy keeps the provider's metadata (the loop-guard marker)."""
    name = output.filename.rsplit("/", 1)[-1]
    if unsafe_filename_reason(name):
        return  # a name that would leave the folder is not followed
    exported = f"{context.output_key}/{name}"
    if storage.stat(context.location, exported) is None:
        return  # exported to the output key itself
    storage.copy(context.location, exported, context.output_key)
    storage.delete(context.location, exported)


def output_keys(output_key: str, outputs: tuple[OutputFile, ...]) -> list[str]:
    """One output goes to the rule's output key; several go into the folder ``<output key>/``
    under the last segment of the provider's file names, which must be safe and differ, or one
    output would take another's place."""
    if len(outputs) == 1:
        return [output_key]
    names = [o.filename.rsplit("/", 1)[-1] for o in outputs]
    for name in names:
        unsafe = unsafe_filename_reason(name)
        if unsafe:
            raise StorageError(f"the provider reported an output named {name!r}: {unsafe}")
    if len(set(names)) != len(names):
        raise StorageError("the provider reported two outputs with the same name")
    return [f"{output_key}/{name}" for name in names]


@dataclass(frozen=True)
class RelayPolicy:
    """Where the relay may download one rule's outputs from, and how much it may write."""

    hosts: tuple[HostPattern, ...]
    max_bytes: int


def relay_policy(bridge: Bridge, rule: Rule) -> RelayPolicy:
    """The provider dialect's download hosts, its configured base URL's host (https only, like
    every declared host) and the hosts the dev stack adds, with the rule's byte limit."""
    provider = bridge.provider(rule.provider)
    declared = [HostPattern.parse(pattern) for pattern in provider.download_hosts]
    base_host = httpx.URL(provider.base_url).host
    return RelayPolicy(
        hosts=(*declared, HostPattern(base_host), *bridge.settings.relay_extra_hosts),
        max_bytes=rule.max_output_bytes,
    )


def relay_output(http: httpx.Client, storage: Storage, location: str, key: str,
                 output: OutputFile, *, marker: str, policy: RelayPolicy, source: str) -> int:
    """Stream one output from the provider's URL into storage. The object appears under
    ``key`` only complete and with the byte count the provider announced; a dropped download
    is started again, up to RELAY_ATTEMPTS times. A URL (or redirect) off the policy's hosts
    is never requested, and a download running past the announced size or the rule's limit
    is cut off at once. The write is create-only but for an earlier output of the same
    ``source`` (a source_tag). None of these refusals is tried again (OutputRefused)."""
    if not output.url:
        raise StorageError(f"the provider gave no URL for {output.filename}")
    _refuse_over_limit(output.filename, output.size, policy.max_bytes)
    problem = ""
    for attempt in range(1, RELAY_ATTEMPTS + 1):
        try:
            with open_download(http, output.url, policy.hosts) as response:
                if response.status_code != 200:
                    problem = f"HTTP {response.status_code}"
                    if response.status_code < 500:
                        break
                    continue
                length = response.headers.get("Content-Length")
                content_length = int(length) if length and length.isdigit() else None
                expected = output.size if output.size is not None else content_length
                chunks = bounded_chunks(response.iter_bytes(RELAY_CHUNK),
                                        filename=output.filename, announced=expected,
                                        limit=policy.max_bytes)
                if output.size is not None and (content_length or 0) > output.size:
                    raise OutputTooLarge(
                        f"{output.filename}: the download's Content-Length of {content_length} "
                        f"bytes is over the {output.size} bytes the provider announced; "
                        "nothing was written")
                written = storage.write_stream(
                    location, key, chunks, metadata={OUTPUT_MARKER: marker, SOURCE_TAG: source},
                    expected_size=expected,
                )
                record_metric("RelayBytes", written, unit="Bytes", rule=marker)
                return written
        except OutputRefused as exc:  # another attempt would be refused again
            logger.warning("relay of %s refused: %s", output.filename, exc)
            raise
        except (httpx.HTTPError, StorageError) as exc:
            problem = f"{type(exc).__name__}: {exc}" if isinstance(exc, StorageError) else (
                type(exc).__name__)
            logger.warning("relay of %s, attempt %d of %d: %s", output.filename, attempt,
                           RELAY_ATTEMPTS, problem)
    raise StorageError(f"relay of {output.filename} failed: {problem}")


def bounded_chunks(chunks: Iterable[bytes], *, filename: str, announced: int | None,
                   limit: int) -> Iterator[bytes]:
    """``chunks`` passed on until their running count would pass the announced size or
    ``limit``, whichever is smaller; then OutputTooLarge, before the chunk that crossed is
    passed on, so the storage aborts its partial write and the download stops right there
    (the storages compare the count only at the end). An announced size over ``limit`` is
    refused here, before anything is read."""
    _refuse_over_limit(filename, announced, limit)
    bound, described = _bound(announced, limit)
    return _bounded(iter(chunks), filename, bound, described)


def _refuse_over_limit(filename: str, announced: int | None, limit: int) -> None:
    if announced is not None and announced > limit:
        raise OutputTooLarge(f"{filename} is announced at {announced} bytes, over "
                             f"{_bound(None, limit)[1]}; nothing was written")


def _bound(announced: int | None, limit: int) -> tuple[int, str]:
    """The byte bound of one output and how a failure report names it."""
    if announced is not None and announced <= limit:
        return announced, f"the {announced} bytes the provider announced"
    return limit, f"the rule's max_output_bytes of {limit} bytes"


def _bounded(chunks: Iterator[bytes], filename: str, bound: int,
             described: str) -> Iterator[bytes]:
    count = 0
    for chunk in chunks:
        count += len(chunk)
        if count > bound:
            raise OutputTooLarge(f"{filename} ran past {described}; stopped after {count} "
                                 "bytes, nothing was written")
        yield chunk
