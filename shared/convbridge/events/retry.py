"""The retry event: ``convbridge retry --stack`` invoking the S3 trigger to resubmit failures.

Retries run inside the trigger function because its role is the only one the grant role
trusts, so write grants can be minted without widening that trust. Lambda's invoke is
IAM-authorized, so the event carries no secret; what it may ask for is still held to one
exact shape (every field known, typed and bounded), so a payload that is not a well-formed
retry request is refused with the field it got wrong rather than read as something else.

Shape::

    {"convbridge": "retry", "rule": str | null, "keys": [str, ...] | null,
     "dry_run": bool, "cursor": {"rule": str, "start": str} | null}

``keys`` limits the run to those sources; ``cursor`` is what an earlier answer handed back
when it stopped early, and the run goes on from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_KEYS", "BadRetryEvent", "RetryCursor", "RetryRequest", "is_retry_event",
           "parse_retry_event"]

#: the field that marks an event as the bridge's own command, and its one accepted value
MARKER = "convbridge"
COMMAND = "retry"
#: source keys one invocation may name; the CLI splits longer lists
MAX_KEYS = 100
#: bytes of an S3 key (also bounds a cursor's report key)
MAX_KEY_BYTES = 1024
#: characters of a rule name
MAX_RULE_CHARS = 256
_FIELDS = frozenset({MARKER, "rule", "keys", "dry_run", "cursor"})


class BadRetryEvent(ValueError):
    """The event is marked as a retry but is not a well-formed one; the message names the
    field and what was wrong with it."""


@dataclass(frozen=True)
class RetryCursor:
    """Where a run stopped: the rule whose failure reports it was reading, and the first
    report key it did not handle; the next run starts there."""

    rule: str
    start: str

    def to_json(self) -> dict[str, str]:
        return {"rule": self.rule, "start": self.start}


@dataclass(frozen=True)
class RetryRequest:
    rule: str | None = None
    keys: tuple[str, ...] | None = None
    dry_run: bool = False
    cursor: RetryCursor | None = None

    def to_json(self) -> dict[str, Any]:
        return {MARKER: COMMAND, "rule": self.rule,
                "keys": list(self.keys) if self.keys is not None else None,
                "dry_run": self.dry_run,
                "cursor": self.cursor.to_json() if self.cursor else None}


def is_retry_event(event: object) -> bool:
    """An event carrying the marker field: no cloud's storage event has it, so anything with
    it is answered as a retry request (or refused as a malformed one)."""
    return isinstance(event, Mapping) and MARKER in event


def parse_retry_event(event: Mapping[str, Any]) -> RetryRequest:
    """The request an event makes, or BadRetryEvent naming the first field that is wrong."""
    unknown = sorted(str(name) for name in event if name not in _FIELDS)
    if unknown:
        raise BadRetryEvent(f"unknown field(s): {', '.join(unknown)[:200]}")
    if event.get(MARKER) != COMMAND:
        raise BadRetryEvent(f"{MARKER}: must be {COMMAND!r}")
    dry_run = event.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise BadRetryEvent("dry_run: must be true or false")
    return RetryRequest(rule=_rule(event.get("rule"), "rule"), keys=_keys(event.get("keys")),
                        dry_run=dry_run, cursor=_cursor(event.get("cursor")))


def _rule(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_RULE_CHARS:
        raise BadRetryEvent(f"{field}: must be a rule name of 1 to {MAX_RULE_CHARS} characters")
    return value


def _key(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadRetryEvent(f"{field}: must be a non-empty string")
    if len(value.encode("utf-8", errors="surrogatepass")) > MAX_KEY_BYTES:
        raise BadRetryEvent(f"{field}: longer than {MAX_KEY_BYTES} bytes")
    return value


def _keys(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise BadRetryEvent("keys: must be null or a non-empty list of source keys")
    if len(value) > MAX_KEYS:
        raise BadRetryEvent(f"keys: at most {MAX_KEYS} per invocation, got {len(value)}")
    return tuple(_key(item, f"keys[{index}]") for index, item in enumerate(value))


def _cursor(value: object) -> RetryCursor | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) != {"rule", "start"}:
        raise BadRetryEvent("cursor: must be null or {\"rule\": ..., \"start\": ...}")
    rule = _rule(value["rule"], "cursor.rule")
    if rule is None:
        raise BadRetryEvent("cursor.rule: must be a rule name")
    return RetryCursor(rule=rule, start=_key(value["start"], "cursor.start"))
