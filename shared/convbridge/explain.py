"""``convbridge explain URI``: what the bridge would do with one object, offline.

It answers the questions a user has before uploading: which rule takes the file (or why each
rule does not), where its outputs and records go, which grants would be minted and for how
long, the route, and the job document the provider would be sent. Nothing is created and no
network is used: grants are placeholders, the provider adapter gets a client that refuses any
request, and every credential in the document reads as redacted.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from convbridge.errors import ConfigError, ConvbridgeError
from convbridge.grants import grant_kind_info
from convbridge.model import ConversionSpec, Grant, GrantKind, JobSpec, ObjectRef, OutputTarget
from convbridge.names import unsafe_key_reason
from convbridge.pipeline.submit import CALLBACK_PATH
from convbridge.planner import plan_route
from convbridge.providers import PROVIDERS
from convbridge.rules import Rule, RuleSet
from convbridge.settings import PREFIX
from convbridge.storage import STORAGES

REDACTED = "<redacted>"
#: what every credential field the adapters read from ``Grant.secret`` holds in the placeholder
#: grants (``port`` must stay a number, the SFTP tasks parse it); the Azure account and the
#: SFTP host are named, taken from the location
PLACEHOLDER_SECRET = {
    **dict.fromkeys(("access_key_id", "secret_access_key", "session_token", "sas_token",
                     "account_key", "password", "private_key", "private_key_id",
                     "passphrase", "client_email", "project_id", "username"), REDACTED),
    "port": "22",
}
#: schemes of the URIs ``explain`` takes, and the storage each names
SCHEMES = {"s3": "s3", "azure": "azure_blob", "gs": "gcs", "gcs": "gcs", "sftp": "sftp"}
PLACEHOLDER_WEBHOOK = "https://<webhook url>"


def parse_uri(uri: str) -> ObjectRef:
    """``s3://bucket/key``, ``azure://account/container/key``, ``gs://bucket/key``,
    ``sftp://host[:port]/path`` as the ObjectRef a trigger would make (Azure locations are
    ``account/container``, as rules name them)."""
    scheme, sep, rest = uri.partition("://")
    storage = SCHEMES.get(scheme.lower())
    if not sep or storage is None:
        raise ValueError(f"{uri!r}: use one of {', '.join(f'{s}://' for s in SCHEMES)}")
    parts = rest.split("/", 2 if storage == "azure_blob" else 1)
    if len(parts) < (3 if storage == "azure_blob" else 2) or not all(parts):
        shape = "account/container/key" if storage == "azure_blob" else "location/key"
        raise ValueError(f"{uri!r}: expected {scheme}://{shape}")
    if storage == "azure_blob":
        return ObjectRef(storage, f"{parts[0]}/{parts[1]}", parts[2])
    return ObjectRef(storage, parts[0], parts[1])


def why_not(rule: Rule, ref: ObjectRef) -> str | None:
    """Why ``rule`` does not take ``ref``, or None when it does."""
    if rule.storage != ref.storage:
        return f"watches {rule.storage}, not {ref.storage}"
    if rule.location != ref.location:
        return f"watches {rule.location}, not {ref.location}"
    if rule.owns(ref.key):
        return "the key is under one of its outputs, results or failures prefixes (a bridge write)"
    if not rule.dropped_key(ref.key).startswith(rule.prefix):
        return f"watches prefix {rule.prefix!r}"
    if not rule.wants(ref):
        return f"converts only {', '.join(rule.suffixes)}"
    return rule.naming_conflict(ref.key)


class _NoNetwork(httpx.BaseTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError(f"convbridge explain sends no requests (asked for {request.url})")


@dataclass(frozen=True)
class GrantLifetimes:
    read_seconds: int
    write_seconds: int

    @classmethod
    def from_env(cls) -> GrantLifetimes:
        """The deployed functions' CONVBRIDGE_*_GRANT_SECONDS when set, else their defaults."""
        def seconds(name: str, default: int) -> int:
            raw = os.environ.get(f"{PREFIX}{name}", "").strip()
            return int(raw) if raw.isdigit() else default
        return cls(seconds("READ_GRANT_SECONDS", 900), seconds("WRITE_GRANT_SECONDS", 3600))


def explain(rules: RuleSet, ref: ObjectRef, lifetimes: GrantLifetimes) -> tuple[bool, list[str]]:
    """The lines ``convbridge explain`` prints, and whether a rule would take ``ref``."""
    lines = [f"object: {ref}"]
    unsafe = unsafe_key_reason(ref.key)
    if unsafe:
        return False, [*lines, f"refused: {unsafe}"]
    rule = rules.match(ref)
    if rule is None or rule.naming_conflict(ref.key):
        lines.append("no rule converts it:")
        lines += [f"  {r.name}: {why_not(r, ref) or 'skipped'}" for r in rules.rules]
        return False, lines
    lines += [
        f"rule: {rule.name} ({rule.storage}://{rule.location}/{rule.prefix}* -> "
        f"{rule.output_format} via {rule.provider})",
        f"output: {rule.output_key(ref.key)} (several outputs: {rule.output_folder(ref.key)}...)",
        f"result record: {rule.result_key(ref.key)}",
        f"failure report: {rule.failure_key(ref.key)}",
    ]
    try:
        job, startable = _job_lines(rule, ref, lifetimes)
    except ConvbridgeError as exc:
        return False, [*lines, f"the job cannot be shown: {exc}"]
    return startable, lines + job


def _job_lines(rule: Rule, ref: ObjectRef,
               lifetimes: GrantLifetimes) -> tuple[list[str], bool]:
    """The route, grants and job document, and whether the job could start at all."""
    storage = STORAGES.load(rule.storage)
    provider_class = PROVIDERS.load(rule.provider)
    plan = plan_route(storage, provider_class, rule.read_grant,
                      hand_over_account=rule.hand_over_account)
    output = OutputTarget(ref.storage, ref.location, rule.output_key(ref.key))
    lines = [f"route: {plan.route}" + (" (the bridge streams the outputs into storage)"
                                       if plan.route == "relay" else "")]
    if rule.read_grant not in storage.read_grant_kinds:
        lines.append(f"note: read_grant {rule.read_grant} is not a grant {rule.storage} can "
                     f"mint; {plan.read_grant} is used instead")
    lifetime = "" if plan.read_grant == "upload" else f", {lifetimes.read_seconds} s"
    lines.append(f"read grant: {plan.read_grant}: {_reads(plan.read_grant)} ({ref.key})"
                 f"{lifetime}")
    if plan.write_grant is None:
        lines.append("write grant: none: the bridge writes the outputs itself")
    else:
        lines.append(f"write grant: {plan.write_grant}: {_writes(plan.write_grant)} "
                     f"({output.key} and {rule.output_folder(ref.key)}*), "
                     f"{lifetimes.write_seconds} s")
    if plan.read_grant == "upload" and not provider_class.takes_uploads:
        lines.append(f"refused: {rule.provider} takes no input uploaded by the bridge; the "
                     "file would get a failure report (UPLOAD_UNSUPPORTED)")
        return lines, False
    now = datetime.now(UTC)
    read = _placeholder(plan.read_grant, ref.storage, ref.location, ref.key, None,
                        now + timedelta(seconds=lifetimes.read_seconds))
    write = None if plan.write_grant is None else _placeholder(
        plan.write_grant, ref.storage, ref.location, output.key, rule.output_folder(ref.key),
        now + timedelta(seconds=lifetimes.write_seconds))
    filename = ref.key.rsplit("/", 1)[-1]
    _, dot, extension = filename.rpartition(".")
    spec = JobSpec(
        source=ref, rule=rule.name,
        conversion=ConversionSpec(extension.lower() if dot else "", rule.output_format,
                                  rule.options),
        route=plan.route, read_grant=read, write_grant=write, output=output,
        context_token="<signed job context>",
        webhook_url=PLACEHOLDER_WEBHOOK + CALLBACK_PATH.format(provider=rule.provider),
        filename=filename,
    )
    default_url = provider_class.default_base_url or "https://<provider url>"
    provider = provider_class(api_key=REDACTED, signing_secret=None,
                              base_url=os.environ.get(f"{PREFIX}{rule.provider.upper()}_URL",
                                                      default_url),
                              http=httpx.Client(transport=_NoNetwork()))
    try:
        document = provider.build_job(spec)
    except (ConfigError, KeyError, RuntimeError) as exc:
        return [*lines, f"the job cannot be shown: {exc}"], False
    body = json.dumps(redact(document), indent=2, sort_keys=True, ensure_ascii=False)
    return [*lines, f"job document sent to {rule.provider} ({provider.base_url}):", body], True


def _reads(kind: GrantKind) -> str:
    info = grant_kind_info(kind)
    return kind if info is None else info.reads


def _writes(kind: GrantKind) -> str:
    info = grant_kind_info(kind)
    return kind if info is None else info.writes


def _placeholder(kind: GrantKind, storage: str, location: str, key: str, prefix: str | None,
                 expires_at: datetime) -> Grant:
    host, _, port = location.partition(":")
    return Grant(kind=kind, storage=storage, location=location, key=key, prefix=prefix,
                 scope="placeholder", expires_at=expires_at, region="<region>",
                 url=f"https://<signed URL for {key}, {REDACTED}>",
                 secret={**PLACEHOLDER_SECRET, "account_name": location.partition("/")[0],
                         "host": host, "port": port or PLACEHOLDER_SECRET["port"]})


#: field names whose values are credentials, whatever an adapter put there
_SENSITIVE = ("secret", "password", "private_key", "token", "sas", "signature", "accountkey",
              "account_key", "keyfile", "credential", "api_key", "apikey")


def redact(node: Any) -> Any:
    """``node`` with every credential-named field's value replaced, in any nesting. The job
    context token and callback URL are placeholders already; a field named like a credential
    is redacted even so, should an adapter put a real one there."""
    if isinstance(node, dict):
        return {key: REDACTED if _sensitive(str(key)) and isinstance(value, str) else redact(value)
                for key, value in node.items()}
    if isinstance(node, list):
        return [redact(item) for item in node]
    return node


def _sensitive(name: str) -> bool:
    lowered = name.lower().replace("-", "_")
    return any(word in lowered for word in _SENSITIVE)
