"""Reading result records back and writing failure reports: what submitting, settling and
retrying share about the records beside the data.
"""

from __future__ import annotations

import json
import logging
from typing import Protocol

from convbridge.model import ObjectRef
from convbridge.records import ResultRecord
from convbridge.rules import Rule
from convbridge.storage.base import Storage

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


def write_failure(storage: Storage, rule: Rule, location: str, key: str,
                   record: ResultRecord) -> None:
    """Failure report, result record, then the rule's failure policy for the source."""
    document = record.to_json()
    storage.write_json(location, rule.failure_key(key), document, marker=rule.name)
    storage.write_json(location, rule.result_key(key), document, marker=rule.name)
    if rule.on_failure in {"copy", "move"} and storage.stat(location, key) is not None:
        storage.copy(location, key, rule.failed_source_key(key))
        if rule.on_failure == "move":
            storage.delete(location, key)
        logger.info("%s %s to %s", "moved" if rule.on_failure == "move" else "copied", key,
                    rule.failed_source_key(key))
