"""A grant that cannot be minted, as a user sees it: a source submitted under a rule ends in a
GRANT_FAILED failure report next to it. The objects and records live in memory; the read
grant comes from whatever the test puts behind :class:`GrantingMemoryStorage` (the real Azure
or GCS adapter, talking to a local server and stand-ins)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from convbridge.model import Grant, GrantKind, ObjectRef
from convbridge.pipeline import submit
from convbridge.testing import MemoryStorage, memory_bridge
from tests.memory_rules import PNG_TO_PDF

RULES = PNG_TO_PDF

ReadGrant = Callable[[ObjectRef, int, GrantKind], Grant]


class GrantingMemoryStorage(MemoryStorage):
    """In-memory objects and records whose read grants ``mint`` makes."""

    def __init__(self, mint: ReadGrant) -> None:
        super().__init__()
        self.mint = mint

    def grant_read(self, ref: ObjectRef, ttl_seconds: int, *,
                   kind: GrantKind = "presigned_url") -> Grant:
        return self.mint(ref, ttl_seconds, kind)


def failure_report_of_a_submit(storage: MemoryStorage) -> dict[str, Any]:
    """Submit one matching upload; it must be rejected with a GRANT_FAILED report, returned."""
    bridge = memory_bridge(RULES, storage=storage)
    ref = storage.put("bucket", "inbox/a.png", b"\x89PNG")
    result = submit(bridge, ref)
    assert result.status == "rejected", result
    report: dict[str, Any] = json.loads(b"".join(storage.read_stream("bucket",
                                                                     "failures/a.png.json")))
    assert report["error"]["code"] == "GRANT_FAILED", report
    return report
