"""``convbridge retry``: submit again the sources that failure reports name.

Run from the command line with the functions' environment, or inside the S3 trigger function
on a retry event (:mod:`convbridge.events.retry`), whose role is the one the grant role
trusts. Inside Lambda a run is bounded: at most ``max_reports`` reports, and it stops while
the invocation still has time to answer; the answer then carries a cursor to go on from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from convbridge.bridge import Bridge
from convbridge.events.retry import BadRetryEvent, RetryCursor, RetryRequest
from convbridge.model import ObjectRef
from convbridge.pipeline.record_io import read_record
from convbridge.pipeline.submit import SubmissionStatus, submit
from convbridge.rules import Rule

logger = logging.getLogger(__name__)

#: a run stops once less than this is left of its time: one more submission (a provider round
#: trip within the HTTP deadline) and the answer must still fit
MARGIN_MS = 10_000

RetryStatus = SubmissionStatus | Literal["would_resubmit"]


@dataclass(frozen=True)
class RetryItem:
    """One failure report and what the run did with its source: a submission's status, or
    ``would_resubmit`` in a dry run."""

    ref: ObjectRef
    rule: str
    report_key: str
    status: RetryStatus
    reason: str = ""
    job_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"object": str(self.ref), "rule": self.rule, "report": self.report_key,
                "status": self.status, "reason": self.reason, "job_id": self.job_id}


@dataclass(frozen=True)
class RetryRun:
    """What one run did, in rule and report order; ``cursor`` is set when it stopped before
    the last report (``stopped`` says why), and a run given it goes on from there."""

    items: tuple[RetryItem, ...]
    dry_run: bool = False
    cursor: RetryCursor | None = None
    stopped: str | None = None

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for item in self.items:
            counts[item.status] = counts.get(item.status, 0) + 1
        return {"dry_run": self.dry_run, "counts": counts,
                "items": [item.to_json() for item in self.items],
                "cursor": self.cursor.to_json() if self.cursor else None,
                "stopped": self.stopped}


def retry_failures(bridge: Bridge, request: RetryRequest | None = None, *,
                   max_reports: int | None = None,
                   remaining_ms: Callable[[], int] | None = None) -> RetryRun:
    """Resubmit every source named by a failure report (of ``request.rule``, of the sources in
    ``request.keys``, from ``request.cursor``). A source the failure policy moved aside is put
    back first. A report is removed once its source is submitted again, so running this twice
    does not start two jobs. A dry run reads the reports and changes nothing."""
    request = request or RetryRequest()
    names = [rule.name for rule in bridge.rules.rules]
    for wanted, what in ((request.rule, "rule"),
                         (request.cursor.rule if request.cursor else None, "cursor.rule")):
        if wanted is not None and wanted not in names:
            raise BadRetryEvent(f"{what}: no rule named {wanted!r}")
    items: list[RetryItem] = []
    for rule, report_key in _reports(bridge, request):
        stop = _stop_reason(len(items), max_reports, remaining_ms)
        if stop:
            logger.info("retry stopped before %s: %s", report_key, stop)
            return RetryRun(tuple(items), request.dry_run, RetryCursor(rule.name, report_key),
                            stop)
        item = _retry_one(bridge, rule, report_key, request)
        if item is not None:
            items.append(item)
    return RetryRun(tuple(items), request.dry_run)


def _stop_reason(handled: int, max_reports: int | None,
                 remaining_ms: Callable[[], int] | None) -> str | None:
    if max_reports is not None and handled >= max_reports:
        return f"{max_reports} reports per run"
    if remaining_ms is not None and remaining_ms() < MARGIN_MS:
        return "the invocation's time is nearly up"
    return None


def _reports(bridge: Bridge, request: RetryRequest) -> Iterator[tuple[Rule, str]]:
    """Failure report keys in rule order, each rule's in key order (the order a cursor
    counts in), from the cursor on and only those of ``request.keys`` when given."""
    reached = request.cursor is None
    for rule in bridge.rules.rules:
        if request.rule and rule.name != request.rule:
            continue
        start = ""
        if not reached:
            assert request.cursor is not None
            if rule.name != request.cursor.rule:
                continue
            reached, start = True, request.cursor.start
        wanted = None if request.keys is None else {
            rule.failure_key(key) for key in request.keys if key.startswith(rule.prefix)}
        storage = bridge.storage(rule.storage)
        for report_key in sorted(storage.list_keys(rule.location, rule.failures_prefix)):
            if report_key < start or not report_key.endswith(".json"):
                continue  # before the cursor, or a source moved aside rather than a report
            if wanted is None or report_key in wanted:
                yield rule, report_key


def _retry_one(bridge: Bridge, rule: Rule, report_key: str,
               request: RetryRequest) -> RetryItem | None:
    storage = bridge.storage(rule.storage)
    report = read_record(storage, rule.location, report_key)
    if report is None:
        return None  # not a report (or gone since the listing)
    key = report.source.key
    if request.keys is not None and key not in request.keys:
        return None
    ref = ObjectRef(rule.storage, rule.location, key)
    moved = rule.failed_source_key(key)
    moved_aside = storage.stat(rule.location, moved) is not None
    if not moved_aside and storage.stat(rule.location, key) is None:
        logger.warning("cannot retry %s: the source is gone", key)
        return RetryItem(ref, rule.name, report_key, "skipped", "the source is gone")
    if request.dry_run:
        return RetryItem(ref, rule.name, report_key, "would_resubmit",
                         f"put back from {moved} first" if moved_aside else "")
    if moved_aside:
        storage.copy(rule.location, moved, key)
        storage.delete(rule.location, moved)
    submission = submit(bridge, ref, attempt=str(report.recorded_at))
    if submission.status == "submitted":
        storage.delete(rule.location, report_key)
    return RetryItem(ref, rule.name, report_key, submission.status, submission.reason,
                     submission.job_id)
