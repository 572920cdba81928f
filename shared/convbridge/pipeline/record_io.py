"""Reading result records back and writing them and failure reports: what submitting,
settling and retrying share about the records beside the data.

A result record is written only where it may go (:func:`write_record`): created where there
is none, or replacing exactly the revision that was read, never a newer submission's record
and never its own context's settled one, so of two writers racing the loser reads again and
decides anew.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from convbridge.errors import StaleWrite, StorageError
from convbridge.model import ObjectRef
from convbridge.records import ResultRecord, newer_submission
from convbridge.rules import Rule
from convbridge.storage.base import Storage

#: lost races a record write goes through before it gives up (each loss means another writer
#: changed the record in between, so this many in a row is not a race but a fight)
RECORD_RACES = 8

logger = logging.getLogger(__name__)


class RecordReader(Protocol):
    """What reading a record takes of a storage (a Storage, or the SFTP sweep's drop)."""

    def stat(self, location: str, key: str) -> ObjectRef | None: ...

    def read_bytes(self, location: str, key: str) -> bytes: ...


def read_record(storage: RecordReader, location: str, key: str) -> ResultRecord | None:
    """The record stored at ``key``; None when there is none or the object is not one."""
    if storage.stat(location, key) is None:
        return None
    try:
        document = json.loads(storage.read_bytes(location, key))
    except (ValueError, RecursionError):
        return None
    return ResultRecord.from_json(document)


@dataclass(frozen=True)
class StoredRecord:
    """A result record as read, with the revision a write replacing it names; ``record`` is
    None when the object there is not a record of ours."""

    record: ResultRecord | None
    revision: str


def read_stored_record(storage: Storage, location: str, key: str) -> StoredRecord | None:
    """The record at ``key`` and its revision, or None when there is no object."""
    found = storage.read_revision(location, key)
    if found is None:
        return None
    data, revision = found
    try:
        document: Any = json.loads(data)
    except (ValueError, RecursionError):
        document = None
    return StoredRecord(ResultRecord.from_json(document), revision)


#: what :func:`write_record` did: ``written``; ``ours``: the record already holds this context
#: as far or further (settled, or the same state); ``newer``: a newer submission's record is
#: there and was left alone
RecordWrite = Literal["written", "ours", "newer"]

def write_record(storage: Storage, location: str, key: str, record: ResultRecord, *,
                 marker: str, seen: StoredRecord | None | Literal["unread"] = "unread",
                 ) -> RecordWrite:
    """Write ``record`` (a record of the context ``record.context_nonce``) at ``key``, only
    over an older submission's record or this context's own unsettled one. The first attempt
    is made on what the caller has ``seen`` there (None: nothing), create-only when it read
    nothing: a first record costs one request."""
    nonce = record.context_nonce or ""
    current = None if seen == "unread" else seen
    for _ in range(RECORD_RACES):
        existing = current.record if current is not None else None
        if existing is not None and existing.names_context and existing.context_nonce == nonce:
            if existing.final or not record.final:
                return "ours"
        elif existing is not None and newer_submission(existing, nonce):
            return "newer"
        try:
            storage.write_json(location, key, record.to_json(), marker=marker,
                               if_revision=current.revision if current else None,
                               if_absent=current is None)
            return "written"
        except StaleWrite:
            current = read_stored_record(storage, location, key)
    raise StorageError(f"{location}/{key}: the record changed {RECORD_RACES} times while it "
                       "was being written")


def write_failure(storage: Storage, rule: Rule, location: str, key: str,
                  record: ResultRecord, *,
                  write_result: Callable[[ResultRecord], bool] | None = None) -> bool:
    """Failure report, result record, then the rule's failure policy for the source.
    ``write_result`` writes the result record where it may go (False: it may not, and the
    source is left as it is); without it the record is written as it is."""
    document = record.to_json()
    storage.write_json(location, rule.failure_key(key), document, marker=rule.name)
    if write_result is None:
        storage.write_json(location, rule.result_key(key), document, marker=rule.name)
    elif not write_result(record):
        return False
    if rule.on_failure in {"copy", "move"} and storage.stat(location, key) is not None:
        storage.copy(location, key, rule.failed_source_key(key))
        if rule.on_failure == "move":
            storage.delete(location, key)
        logger.info("%s %s to %s", "moved" if rule.on_failure == "move" else "copied", key,
                    rule.failed_source_key(key))
    return True
