"""``accept`` and ``settle`` (together ``complete``): turn a provider callback into records.

A callback is proven genuine before anything is written, settles its job context once and
only for the job the bridge created for it, and a duplicate callback writes nothing twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from convbridge import records
from convbridge.bridge import Bridge
from convbridge.context import JobContext, nonce_order, verify_context
from convbridge.errors import (
    CallbackError,
    CallbackSignatureError,
    CallbackTooLarge,
    ContextError,
    OutputRefused,
    StorageError,
)
from convbridge.model import (
    CallbackRequest,
    JobOutcome,
    ObjectRef,
    OutputFile,
    source_tag,
)
from convbridge.names import unsafe_filename_reason
from convbridge.pipeline.record_io import (
    read_record,
    read_stored_record,
    write_failure,
    write_record,
)
from convbridge.pipeline.relay import relay_output, relay_policy
from convbridge.providers.base import TOKEN_PARAMETER
from convbridge.records import ResultRecord, newer_submission
from convbridge.rules import Rule
from convbridge.storage.base import Storage
from convbridge.telemetry import record as record_metric

logger = logging.getLogger(__name__)


CompletionStatus = Literal["recorded", "ignored", "duplicate"]


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

    status: CompletionStatus
    job_id: str | None = None
    outcome: str | None = None
    record_key: str | None = None


def complete(bridge: Bridge, provider_name: str, request: CallbackRequest) -> Completion:
    accepted = accept(bridge, provider_name, request)
    if accepted is None:
        return Completion("ignored")
    return settle(bridge, accepted)


def accept(bridge: Bridge, provider_name: str, request: CallbackRequest, *,
           confirm: bool = True) -> Accepted | None:
    """Prove a callback genuine, fast and without writing anything. Raises CallbackError (with
    the HTTP status to answer); returns None for events that need no action. ``confirm=False``
    stops after the cheap checks, before unsigned dialects ask the provider what happened (a
    request that can outlast the provider's callback timeout, Online-Convert's 3 s): the
    callback is then queued, and confirmed where it is settled."""
    if len(request.body) > bridge.settings.max_callback_bytes:
        raise CallbackTooLarge(f"callback body of {len(request.body)} bytes is over the limit")
    if provider_name not in {rule.provider for rule in bridge.rules.rules}:
        raise ContextError(f"no rule uses provider {provider_name!r}")
    provider = bridge.provider(provider_name)
    max_age = bridge.settings.context_max_age_seconds
    # The cheap checks come before any parsing: a token in the callback URL (how dialects
    # that sign nothing prove a callback ours) is verified with our HMAC here, and signed
    # dialects check the provider's HMAC over the raw bytes first thing in accept_callback.
    url_token = request.parameters().get(TOKEN_PARAMETER)
    url_context = None if url_token is None else verify_context(
        url_token, bridge.context_key(), max_age_seconds=max_age)
    try:
        outcome = provider.accept_callback(request)
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
    confirmed = provider.confirm(outcome, request)
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
    record = read_record(storage, context.location, rule.result_key(context.key))
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
    claim = bridge.claims.once(
        "settle", {"context": accepted.context.nonce},
        lambda: _settle_claimed(bridge, accepted), Completion,
    )
    result = claim.result
    if result.status == "ignored":
        return Completion("ignored", outcome.job_id)
    if result.job_id != outcome.job_id:
        raise CallbackSignatureError(f"the job context was settled by job {result.job_id}, "
                                     f"not job {outcome.job_id}")
    if claim.replayed or result.status == "duplicate":
        logger.info("job %s already settled as %s; %s callback changes nothing",
                    outcome.job_id, result.outcome, outcome.event or "repeated")
        return Completion("duplicate", outcome.job_id, result.outcome, result.record_key)
    return result


@dataclass(frozen=True)
class _Recorded:
    """What the result record says about one job context: no job recorded for it yet
    (``unbound``), its job recorded (``bound``), settled by that job (``settled``), or the
    record now belongs to another submission of the same source (``other``)."""

    state: Literal["unbound", "bound", "settled", "other"]
    job_id: str | None = None


def _recorded_job(record: ResultRecord | None, nonce: str) -> _Recorded:
    """A submission records its job only once the job exists, so a callback may find the
    record of an older submission of the source (an earlier upload of the key) still there:
    its context is then simply not recorded yet. Only a newer submission's record makes it
    ``other``."""
    if record is None:
        return _Recorded("unbound")
    job_id = record.job_id
    if not record.names_context:
        if nonce_order(nonce) is not None:
            return _Recorded("unbound")  # older than any context of this release
        # written before records named their context: the job id is all it tells
        return _Recorded("settled" if record.final else "bound", job_id) if job_id else (
            _Recorded("unbound"))
    if record.context_nonce != nonce:
        return _Recorded("other") if newer_submission(record, nonce) else _Recorded("unbound")
    if record.final:
        return _Recorded("settled", job_id)
    return _Recorded("bound", job_id) if job_id else _Recorded("unbound")


def _settle_claimed(bridge: Bridge, accepted: Accepted) -> Completion:
    outcome, context, rule = accepted.outcome, accepted.context, accepted.rule
    storage = bridge.storage(context.storage)
    result_key = rule.result_key(context.key)
    stored = read_stored_record(storage, context.location, result_key)
    previous = stored.record if stored else None
    recorded = _recorded_job(previous, context.nonce)
    superseded = Completion("ignored", outcome.job_id, None, result_key)
    if recorded.state == "other":
        logger.info("job %s: the record of %s belongs to a newer submission; its callback "
                    "changes nothing", outcome.job_id, context.key)
        return superseded
    if recorded.job_id is not None and recorded.job_id != outcome.job_id:
        raise CallbackSignatureError(f"job {outcome.job_id} is not the job the bridge created "
                                     "for this context")
    if recorded.state == "settled":
        return Completion("duplicate", outcome.job_id, previous.status if previous else None,
                          result_key)
    if (recorded.job_id is None and outcome.job_id
            and bridge.provider(rule.provider).binds_before_start):
        # the bridge records these jobs before they can run: an unrecorded one is not ours
        # (an outcome naming no job is the reconciler's report that none was made)
        raise CallbackSignatureError(f"job {outcome.job_id} was not recorded for this context")
    source = ObjectRef(storage=context.storage, location=context.location, key=context.key,
                       version=context.version, size=context.source_size)
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
    current = read_stored_record(storage, context.location, result_key)
    if _recorded_job(current.record if current else None, context.nonce).state == "other":
        return _superseded(outcome, context, superseded)
    ours = previous is not None and previous.context_nonce == context.nonce
    settled = records.outcome_record(
        source, rule, outcome, route=context.route, outputs=outputs,
        context_nonce=context.nonce,
        submitted_at=previous.submitted_at if previous is not None and ours else (
            datetime.fromtimestamp(context.issued_at, UTC).isoformat()))

    def write_result(record: ResultRecord) -> bool:
        # over exactly the revision just read: a newer submission recorded in between wins
        return write_record(storage, context.location, result_key, record, marker=rule.name,
                            seen=current) != "newer"

    written = (write_failure(storage, rule, context.location, context.key, settled,
                             write_result=write_result) if outcome.status == "failed"
               else write_result(settled))
    if not written:
        return _superseded(outcome, context, superseded)
    storage.after_settle(context.location, context.key, outcome.status)
    logger.info("job %s for %s %s; record %s", outcome.job_id, source, outcome.status, result_key)
    record_metric("JobsFinished" if outcome.status == "finished" else "JobsFailed", 1,
                  rule=rule.name, provider=rule.provider)
    if outcome.ended_at is not None:
        latency = (datetime.now(UTC) - outcome.ended_at).total_seconds() * 1000
        record_metric("CallbackLatencyMs", max(latency, 0.0), unit="Milliseconds",
                      provider=rule.provider)
    return Completion("recorded", outcome.job_id, outcome.status, result_key)


def _superseded(outcome: JobOutcome, context: JobContext, answer: Completion) -> Completion:
    logger.info("job %s: a newer submission of %s took its record while it settled; the "
                "record is left to it", outcome.job_id, context.key)
    return answer


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
