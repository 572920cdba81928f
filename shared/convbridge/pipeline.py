"""The only orchestration code: ``submit(ref)`` starts a job for a stored object, and
``complete(callback)`` settles one.

Everything else (events, rules, grants, provider dialects, records) is a part; this module
decides the order and what happens when a part says no. A rejected object always leaves a
failure report or a logged reason, and one bad object never stops the others in a batch.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import httpx

from convbridge import records
from convbridge.bridge import Bridge
from convbridge.context import JobContext, sign_context, verify_context
from convbridge.errors import (
    CallbackTooLarge,
    ContextError,
    ConvbridgeError,
    ProviderRejected,
    ProviderUnavailable,
    RejectedObject,
    StorageError,
)
from convbridge.model import (
    ConversionSpec,
    JobOutcome,
    JobSpec,
    ObjectRef,
    OutputFile,
    OutputTarget,
)
from convbridge.planner import plan_route
from convbridge.rules import Rule
from convbridge.storage.base import OUTPUT_MARKER, Storage

logger = logging.getLogger(__name__)

CALLBACK_PATH = "/callbacks/{provider}"


@dataclass(frozen=True)
class Submission:
    """What ``submit`` did with one object: ``submitted``, ``rejected`` (failure report
    written), ``skipped`` (logged only) or ``error`` (could not even report)."""

    ref: ObjectRef
    status: str
    reason: str = ""
    rule: str | None = None
    job_id: str | None = None


@dataclass(frozen=True)
class Completion:
    status: str  # "recorded" | "ignored" | "duplicate"
    job_id: str | None = None
    outcome: str | None = None
    record_key: str | None = None


# ----------------------------------------------------------------------------- submit


def submit_all(bridge: Bridge, refs: Iterable[ObjectRef]) -> list[Submission]:
    """Submit each object on its own: an error on one is reported and the rest go on."""
    results = []
    for ref in refs:
        try:
            results.append(submit(bridge, ref))
        except ConvbridgeError as exc:
            logger.error("could not submit %s: %s", ref, exc)
            results.append(Submission(ref, "error", str(exc)))
    return results


def submit(bridge: Bridge, ref: ObjectRef) -> Submission:
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
    storage = bridge.storage(ref.storage)
    try:
        ref = _with_size(storage, ref)
        spec = _conversion(rule, ref)
    except RejectedObject as rejected:
        return _reject(storage, ref, rule, rejected)
    if ref.size is None:
        return _skip(ref, "object no longer exists")
    try:
        job_id, route = _start_job(bridge, storage, rule, ref, spec)
    except ProviderRejected as exc:
        return _reject(storage, ref, rule, RejectedObject(
            exc.code or f"PROVIDER_HTTP_{exc.status}", exc.message))
    except ProviderUnavailable as exc:
        return _reject(storage, ref, rule, RejectedObject("PROVIDER_UNAVAILABLE", exc.message))
    storage.write_json(
        ref.location, rule.result_key(ref.key),
        records.submitted_record(ref, rule, job_id=job_id, route=route),
        marker=rule.name,
    )
    logger.info("submitted %s under rule %s as %s job %s (route %s)",
                ref, rule.name, rule.provider, job_id, route)
    return Submission(ref, "submitted", rule=rule.name, job_id=job_id)


def unsafe_key_reason(key: str) -> str | None:
    """Keys the bridge will not derive output and record names from. S3 keys are opaque, but
    the same names become paths on SFTP and in users' sync tools, where these escape."""
    if not key or key.endswith("/"):
        return "a folder marker, not a file"
    if key.startswith("/"):
        return "starts with '/'"
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        return "contains control characters"
    if any(part in {".", ".."} for part in key.split("/")):
        return "contains '.' or '..' path segments"
    return None


def _skip(ref: ObjectRef, reason: str) -> Submission:
    logger.info("skipped %s: %s", ref, reason)
    return Submission(ref, "skipped", reason)


def _reject(storage: Storage, ref: ObjectRef, rule: Rule, rejected: RejectedObject) -> Submission:
    logger.warning("rejected %s under rule %s: %s", ref, rule.name, rejected)
    document = records.rejected_record(ref, rule, code=rejected.code, message=rejected.message)
    storage.write_json(ref.location, rule.failure_key(ref.key), document, marker=rule.name)
    storage.write_json(ref.location, rule.result_key(ref.key), document, marker=rule.name)
    return Submission(ref, "rejected", str(rejected), rule=rule.name)


def _with_size(storage: Storage, ref: ObjectRef) -> ObjectRef:
    if ref.size is not None:
        return ref
    found = storage.stat(ref.location, ref.key)
    if found is None:
        return ref
    return replace(ref, size=found.size, version=ref.version or found.version)


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
               conversion: ConversionSpec) -> tuple[str, str]:
    settings = bridge.settings
    provider = bridge.provider(rule.provider)
    plan = plan_route(ref.storage, type(provider), rule.read_grant)
    output = OutputTarget(storage=ref.storage, location=ref.location,
                          key=rule.output_key(ref.key))
    read_grant = storage.grant_read(ref, settings.read_grant_seconds, kind=plan.read_grant)
    write_grant = (storage.grant_write(output, settings.write_grant_seconds)
                   if plan.route == "native" else None)
    context = JobContext.new(rule=rule.name, storage=ref.storage, location=ref.location,
                             key=ref.key, version=ref.version, output_key=output.key,
                             route=plan.route)
    if not settings.webhook_url:
        raise StorageError("CONVBRIDGE_WEBHOOK_URL is not set; providers could not call back")
    spec = JobSpec(
        source=ref, rule=rule.name, conversion=conversion, route=plan.route,
        read_grant=read_grant, write_grant=write_grant, output=output,
        context_token=sign_context(context, bridge.context_key()),
        webhook_url=settings.webhook_url.rstrip("/") + CALLBACK_PATH.format(provider=provider.name),
        filename=ref.key.rsplit("/", 1)[-1],
    )
    logger.info("grants for %s: read %s (%s), write %s", ref, read_grant.scope, read_grant.kind,
                write_grant.scope if write_grant else "relay through the bridge")
    return provider.start(spec), plan.route


# --------------------------------------------------------------------------- complete


def complete(bridge: Bridge, provider_name: str, headers: Mapping[str, str],
             body: bytes) -> Completion:
    """Settle a job from a provider callback. Raises CallbackError (with the HTTP status to
    answer) for anything not proven genuine; writes nothing in that case."""
    if len(body) > bridge.settings.max_callback_bytes:
        raise CallbackTooLarge(f"callback body of {len(body)} bytes is over the limit")
    if provider_name not in {rule.provider for rule in bridge.rules.rules}:
        raise ContextError(f"no rule uses provider {provider_name!r}")
    provider = bridge.provider(provider_name)
    outcome = provider.accept_callback(headers, body)
    if outcome is None:
        return Completion("ignored")
    context = verify_context(outcome.context_token, bridge.context_key(),
                             max_age_seconds=bridge.settings.context_max_age_seconds)
    rule = _rule_for(bridge, context, provider_name)
    storage = bridge.storage(context.storage)
    source = ObjectRef(storage=context.storage, location=context.location, key=context.key,
                       version=context.version)
    result_key = rule.result_key(context.key)
    previous = _read_record(storage, context.location, result_key)
    if previous and previous.get("job_id") == outcome.job_id and previous.get("status") in {
            "finished", "failed"}:
        logger.info("job %s already settled as %s; callback %s ignored",
                    outcome.job_id, previous["status"], outcome.event)
        return Completion("duplicate", outcome.job_id, previous["status"], result_key)
    submitted_at = previous.get("submitted_at") if previous else None
    if outcome.status == "finished":
        try:
            outputs = _collect_outputs(bridge, storage, context, outcome)
        except ConvbridgeError as exc:
            outcome = replace(outcome, status="failed", failed_task="relay",
                              code="OUTPUT_UNAVAILABLE", message=str(exc))
            outputs = []
    else:
        outputs = []
    source = replace(source, size=(previous or {}).get("source", {}).get("size"))
    document = records.outcome_record(source, rule, outcome, route=context.route,
                                      outputs=outputs, submitted_at=submitted_at)
    if outcome.status == "failed":
        storage.write_json(context.location, rule.failure_key(context.key), document,
                           marker=rule.name)
    storage.write_json(context.location, result_key, document, marker=rule.name)
    logger.info("job %s for %s %s; record %s", outcome.job_id, source, outcome.status, result_key)
    return Completion("recorded", outcome.job_id, outcome.status, result_key)


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


def _collect_outputs(bridge: Bridge, storage: Storage, context: JobContext,
                     outcome: JobOutcome) -> list[OutputFile]:
    if not outcome.outputs:
        raise StorageError("the provider reported no output files")
    keys = _output_keys(context.output_key, outcome.outputs)
    collected = []
    for output, key in zip(outcome.outputs, keys, strict=True):
        if context.route == "relay":
            size = _relay(bridge, storage, context, output, key)
        else:
            found = storage.stat(context.location, key)
            if found is None:
                raise StorageError(f"the provider reported {output.filename} but {key} is missing")
            size = found.size or 0
        collected.append(OutputFile(filename=output.filename, size=size, key=key))
    return collected


def _output_keys(output_key: str, outputs: tuple[OutputFile, ...]) -> list[str]:
    """One output goes to the rule's output key; several go into a folder named after it."""
    if len(outputs) == 1:
        return [output_key]
    directory, slash, name = output_key.rpartition("/")
    folder = f"{directory}{slash}{name.rpartition('.')[0] or name}/"
    return [f"{folder}{o.filename.rsplit('/', 1)[-1]}" for o in outputs]


def _relay(bridge: Bridge, storage: Storage, context: JobContext, output: OutputFile,
           key: str) -> int:
    if not output.url:
        raise StorageError(f"the provider gave no URL for {output.filename}")
    try:
        with bridge.http.stream("GET", output.url) as response:
            if response.status_code != 200:
                raise StorageError(f"download of {output.filename} answered "
                                   f"HTTP {response.status_code}")
            written = storage.write_stream(
                context.location, key, response.iter_bytes(1024 * 1024),
                metadata={OUTPUT_MARKER: context.rule},
            )
    except httpx.HTTPError as exc:
        raise StorageError(f"download of {output.filename} failed: {type(exc).__name__}") from exc
    if output.size is not None and written != output.size:
        raise StorageError(f"{output.filename}: wrote {written} bytes, provider said {output.size}")
    return written
