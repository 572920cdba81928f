"""Azure Event Grid deliveries -> ``ObjectRef``s for blobs that finished uploading.

Event Grid delivers ``Microsoft.Storage.BlobCreated`` in its own Event Grid schema (always a JSON
array) or in CloudEvents 1.0 (one object in structured mode, an array in batched mode); both carry
the same ``data`` object, whose ``url`` names the account, container and blob. Only uploads that
are complete start a job: ``data.api`` must be PutBlob, PutBlockList, CopyBlob (Blob REST),
FlushWithClose (Data Lake) or SftpCommit (SFTP); ``CreateFile``, ``SftpCreate`` and the like
announce an empty placeholder and are skipped with a reason, as are other event types and
malformed events. Nothing here raises on bad input. The read-only wrapper follows the manner of
:mod:`convbridge.events.s3` and imports only the standard library, so the Azure trigger answers a
handshake without loading any SDK.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cached_property
from typing import Any
from urllib.parse import unquote

from convbridge.events import ParsedEvents
from convbridge.model import ObjectRef

__all__ = [
    "BlobCreatedEvent",
    "MalformedEvent",
    "parse_event_grid",
    "split_blob_url",
    "subscription_validation_code",
]

STORAGE = "azure_blob"
BLOB_CREATED = "Microsoft.Storage.BlobCreated"
SUBSCRIPTION_VALIDATION = "Microsoft.EventGrid.SubscriptionValidationEvent"
SUBSCRIPTION_DELETED = "Microsoft.EventGrid.SubscriptionDeletedEvent"
#: APIs after which the blob holds its final bytes (or, for CopyBlob, will: see below).
COMMITTING_APIS = frozenset({"PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose",
                             "SftpCommit"})
#: Events whose size is left to the storage, which makes the pipeline look at the blob itself.
#: Data Lake and SFTP commits report the write's offset and length, not always the blob's size
#: (Azure's own SftpCommit sample says contentLength 0 for a written file), and a real upload
#: must not be rejected as empty. CopyBlob fires when the copy starts on accounts with a
#: hierarchical namespace; the adapter's stat refuses a pending copy, so the delivery is
#: answered 503 and retried instead of a provider reading a half-copied blob.
_SIZE_FROM_STORAGE = frozenset({"FlushWithClose", "SftpCommit", "CopyBlob"})

# Matched whole with fullmatch (or \Z): "$" would let a trailing newline through.
# Azure naming rules: accounts 3-24 lowercase letters and digits; containers 3-63 of lowercase
# letters, digits and single hyphens, starting and ending with a letter or digit.
_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_CONTAINER = re.compile(r"(?=.{3,63}\Z)[a-z0-9]+(-[a-z0-9]+)*")
_TOPIC_ACCOUNT = re.compile(r"/providers/Microsoft\.Storage/storageAccounts/([^/]+)\Z",
                            re.IGNORECASE)
#: an authority holds no whitespace; the path may hold anything (an unencoded blob name)
_URL = re.compile(r"(https?)://([^/?#\s]+)/(.*)", re.DOTALL)
_IP_OR_LOCAL = re.compile(r"(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-f:]+\]|localhost)(:\d+)?",
                          re.IGNORECASE | re.ASCII)


class MalformedEvent(ValueError):
    """An event lacks a field or holds one of the wrong type; the message names the field."""


def split_blob_url(url: str, account_hint: str | None = None) -> tuple[str, str, str]:
    """(account, container, blob name) from a blob URL, the blob name percent-decoded once.

    Azure names the account in the host (``acct.blob.core.windows.net``, ``acct.dfs...``);
    emulators and IP endpoints put it first in the path (``127.0.0.1:10000/acct/...``). The
    blob name is everything after the container, ``?`` and ``#`` included: the URL of a blob
    has no query, so a raw ``?`` can only be part of an unencoded name.
    """
    found = _URL.fullmatch(url)
    if not found:
        raise MalformedEvent(f"data.url {url!r} is not an http(s) URL with a path")
    authority, path = found.group(2).rpartition("@")[2].lower(), found.group(3)
    host = authority.rsplit(":", 1)[0] if not authority.endswith("]") else authority
    first_label = host.split(".", 1)[0]
    path_style = bool(_IP_OR_LOCAL.fullmatch(authority)) or (
        account_hint is not None and first_label != account_hint
        and path.split("/", 1)[0] == account_hint
    )
    if path_style:
        account, _, path = path.partition("/")
    else:
        account = first_label
    container, slash, raw_blob = path.partition("/")
    if not _ACCOUNT.fullmatch(account):
        raise MalformedEvent(f"data.url names no valid storage account: {url!r}")
    if account_hint is not None and account != account_hint:
        raise MalformedEvent(f"data.url names account {account!r} but the event comes from "
                             f"{account_hint!r}")
    if not _CONTAINER.fullmatch(container):
        raise MalformedEvent(f"data.url names no valid container: {url!r}")
    if not slash or not raw_blob:
        raise MalformedEvent(f"data.url names no blob: {url!r}")
    try:
        blob = unquote(raw_blob, encoding="utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise MalformedEvent(f"blob name {raw_blob!r} is not percent-encoded UTF-8") from exc
    return account, container, blob


class BlobCreatedEvent:
    """One storage event in either schema; ``schema`` says which (``eventgrid`` or
    ``cloudevents``). Missing or mistyped fields raise ``MalformedEvent`` naming the field."""

    def __init__(self, raw: Mapping[str, Any]) -> None:
        self.raw = raw
        self.schema = "cloudevents" if "specversion" in raw else "eventgrid"

    def _text(self, name: str, *, within: Mapping[str, Any] | None = None,
              where: str = "") -> str:
        source = self.raw if within is None else within
        value = source.get(name)
        if not isinstance(value, str) or not value:
            raise MalformedEvent(f"{where}{name} is missing or not a non-empty string")
        return value

    def _optional_text(self, name: str, within: Mapping[str, Any], where: str) -> str | None:
        value = within.get(name)
        if value is not None and not isinstance(value, str):
            raise MalformedEvent(f"{where}{name} is not a string: {value!r}")
        return value

    @property
    def id(self) -> str | None:
        value = self.raw.get("id")
        return value if isinstance(value, str) and value else None

    @property
    def event_type(self) -> str:
        return self._text("type" if self.schema == "cloudevents" else "eventType")

    @property
    def topic(self) -> str | None:
        """The storage account's resource id (``topic``, or ``source`` in CloudEvents)."""
        value = self.raw.get("source" if self.schema == "cloudevents" else "topic")
        return value if isinstance(value, str) and value else None

    @property
    def topic_account(self) -> str | None:
        found = _TOPIC_ACCOUNT.search(self.topic or "")
        return found.group(1).lower() if found else None

    @property
    def data(self) -> Mapping[str, Any]:
        value = self.raw.get("data")
        if not isinstance(value, Mapping):
            raise MalformedEvent("data is missing or not an object")
        return value

    @property
    def api(self) -> str:
        return self._text("api", within=self.data, where="data.")

    @property
    def url(self) -> str:
        return self._text("url", within=self.data, where="data.")

    @cached_property
    def parts(self) -> tuple[str, str, str]:
        return split_blob_url(self.url, self.topic_account)

    @property
    def etag(self) -> str | None:
        value = self._optional_text("eTag", self.data, "data.")
        # Azure quotes ETags (the data says "\"0x8D...\""); the quotes are not the value, and
        # keeping them would make one upload look like two versions to the claims.
        stripped = (value or "").strip().strip('"')
        return stripped or None

    @property
    def size(self) -> int | None:
        value = self.data.get("contentLength")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise MalformedEvent(f"data.contentLength is not a byte count: {value!r}")
        return value

    def object_ref(self) -> ObjectRef:
        account, container, blob = self.parts
        size = self.size
        return ObjectRef(
            storage=STORAGE,
            location=f"{account}/{container}",
            key=blob,
            version=self.etag,
            size=None if self.api in _SIZE_FROM_STORAGE else size,
        )


def parse_event_grid(payload: object) -> ParsedEvents:
    """Blobs created according to one Event Grid delivery (either schema, one event or many),
    in delivery order; every event that starts nothing is listed in ``ignored`` with why."""
    if isinstance(payload, list):
        if not payload:
            return ParsedEvents.skip("delivery: an empty array of events")
        return ParsedEvents.combine(_parse_one(item, f"events[{index}]")
                                    for index, item in enumerate(payload))
    return _parse_one(payload, "event")


def subscription_validation_code(payload: object) -> str | None:
    """``data.validationCode`` of an Event Grid schema subscription validation event, which
    Event Grid sends alone when a subscription is created; None for anything else."""
    events = payload if isinstance(payload, list) else [payload]
    for event in events:
        if isinstance(event, Mapping) and event.get("eventType") == SUBSCRIPTION_VALIDATION:
            data = event.get("data")
            code = data.get("validationCode") if isinstance(data, Mapping) else None
            return code if isinstance(code, str) and code else None
    return None


def _parse_one(item: object, where: str) -> ParsedEvents:
    if not isinstance(item, Mapping):
        return ParsedEvents.skip(f"{where}: not a JSON object but {type(item).__name__}")
    event = BlobCreatedEvent(item)
    if event.id:
        where = f"{where} (id {event.id})"
    try:
        event_type = event.event_type
        if event_type in (SUBSCRIPTION_VALIDATION, SUBSCRIPTION_DELETED):
            return ParsedEvents.skip(f"{where}: {event_type} is about the subscription, "
                                     "not a blob")
        if event_type != BLOB_CREATED:
            return ParsedEvents.skip(f"{where}: {event_type} is not {BLOB_CREATED}"
                                     f"{_target(event)}")
        api = event.api
        if api not in COMMITTING_APIS:
            return ParsedEvents.skip(f"{where}: data.api {api!r} does not commit a complete "
                                     f"blob{_target(event)}")
        return ParsedEvents.of(event.object_ref())
    except MalformedEvent as exc:
        return ParsedEvents.skip(f"{where}: malformed {event.schema} storage event: {exc}")


def _target(event: BlobCreatedEvent) -> str:
    """`` (azure_blob://acct/container/blob)`` when readable, else nothing: the reason for a
    skip does not depend on it, so its absence must not hide the reason."""
    try:
        account, container, blob = event.parts
    except MalformedEvent:
        return ""
    return f" ({STORAGE}://{account}/{container}/{blob})"
