"""The values that flow through convbridge: what landed, what may touch it, what to make, and
what came back.

All are frozen dataclasses so a value that crossed a trust boundary cannot be altered later.
Secret material lives only in ``Grant.secret`` and is kept out of ``repr`` so that logging a
grant (or a JobSpec holding one) never prints a credential.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import parse_qs

from convbridge.errors import CallbackSignatureError

Route = Literal["native", "relay"]
#: ``sftp_account`` hands over a dedicated account (only when a rule opts in); ``upload`` means
#: no credential leaves the bridge: it pushes the bytes to the provider itself
GrantKind = Literal["presigned_url", "sts_session", "sftp_account", "upload", "sas",
                    "gcs_service_account"]
OutcomeStatus = Literal["finished", "failed"]

#: Metadata key the bridge sets on everything it writes. The trigger's loop guard drops any
#: object carrying it, so writing into a watched prefix never starts a job.
OUTPUT_MARKER = "convbridge-output"
#: Metadata key naming the source an output was made from (:func:`source_tag`). A write whose
#: metadata carries it is create-only: it may replace only an object with the same tag, an
#: earlier output of the same source (a re-upload converts again).
SOURCE_TAG = "convbridge-source"

#: Folders of a swept storage (see convbridge.triggers.sftp_sweep): a sweep claims a file by
#: moving it under CLAIM_PREFIX (keeping its key) and, once settled, to DONE_PREFIX or
#: FAILED_PREFIX.
CLAIM_PREFIX = "processing/"
DONE_PREFIX = "done/"
FAILED_PREFIX = "failed/"


@dataclass(frozen=True)
class ObjectRef:
    """One stored object. ``location`` is the bucket/container/host; ``version`` is what makes
    two uploads of the same key distinct (S3 versionId or ETag, Azure ETag, GCS generation,
    SFTP size+mtime)."""

    storage: str
    location: str
    key: str
    version: str | None = None
    size: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        return f"{self.storage}://{self.location}/{self.key}"


@dataclass(frozen=True)
class Grant:
    """A short-lived credential scoped to one object (read) or one job's outputs (write).

    ``scope`` describes in words what the grant allows, for logs and records. ``secret`` holds
    the credential itself (access key, secret key, session token) and never appears in repr.
    """

    kind: GrantKind
    storage: str
    location: str
    scope: str
    expires_at: datetime
    key: str | None = None
    prefix: str | None = None
    region: str | None = None
    endpoint: str | None = None
    url: str | None = field(default=None, repr=False)
    secret: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ConversionSpec:
    """What to make: ``input_format`` -> ``output_format`` with provider ``options``."""

    input_format: str
    output_format: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class OutputTarget:
    """Where a job's output goes: an exact key for one output."""

    storage: str
    location: str
    key: str


@dataclass(frozen=True)
class JobSpec:
    """Everything a provider adapter needs to build one job; no adapter reads settings itself."""

    source: ObjectRef
    rule: str
    conversion: ConversionSpec
    route: Route
    read_grant: Grant
    write_grant: Grant | None
    output: OutputTarget
    context_token: str = field(repr=False)
    webhook_url: str = field(repr=False)
    filename: str = ""


@dataclass(frozen=True)
class OutputFile:
    """One file a job produced: where it is now (``key``) or where to fetch it (``url``)."""

    filename: str
    size: int | None = None
    key: str | None = None
    url: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class JobOutcome:
    """A provider's verdict on one job, parsed from a callback or a status read."""

    provider: str
    job_id: str
    status: OutcomeStatus
    context_token: str | None = field(default=None, repr=False)
    event: str = ""
    outputs: tuple[OutputFile, ...] = ()
    failed_task: str | None = None
    code: str | None = None
    message: str | None = None
    started_at: datetime | None = None
    ended_at: datetime | None = None


def source_tag(location: str, key: str) -> str:
    """Hex SHA-256 of ``location/key``: ASCII whatever the key, as S3 metadata requires, and
    no source name in the output's metadata."""
    return hashlib.sha256(f"{location}/{key}".encode()).hexdigest()


def output_metadata(rule: str, source: ObjectRef, *, azure_names: bool = False) -> dict[str, str]:
    """The metadata every output carries, whoever writes it (the relay, or a provider's native
    export): the loop-guard marker naming the rule, and the source tag that lets a new version
    of the same source replace it. ``azure_names``: Azure metadata names must be C#
    identifiers, so ``-`` is stored as ``_`` (the Azure adapter reads them back as ``-``)."""
    metadata = {OUTPUT_MARKER: rule, SOURCE_TAG: source_tag(source.location, source.key)}
    if azure_names:
        return {name.replace("-", "_"): value for name, value in metadata.items()}
    return metadata


@dataclass(frozen=True)
class CallbackRequest:
    """A provider callback as it reached the webhook, built once from the HTTP event and
    handed to the adapter (and through the completion queue) unchanged. ``body`` is the exact
    bytes received, which signatures cover; header names are lower-cased here, so a lookup
    never depends on how the caller spelled them; ``query`` is the callback URL's raw query
    string, where dialects that sign nothing carry their per-job token."""

    body: bytes = field(repr=False)
    headers: Mapping[str, str] = field(default_factory=dict)
    query: str = field(default="", repr=False)
    method: str = "POST"

    def __post_init__(self) -> None:
        lowered = {str(name).lower(): str(value) for name, value in self.headers.items()}
        object.__setattr__(self, "headers", MappingProxyType(lowered))

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def parameters(self) -> dict[str, str]:
        """The query parameters. A repeated parameter is refused (CallbackSignatureError):
        which copy a check reads and which one the rest of the code reads must never differ."""
        parsed = parse_qs(self.query, keep_blank_values=True)
        if any(len(values) > 1 for values in parsed.values()):
            raise CallbackSignatureError("a callback query parameter is repeated")
        return {name: values[0] for name, values in parsed.items()}
