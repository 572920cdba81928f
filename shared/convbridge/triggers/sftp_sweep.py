"""The scheduled sweep of SFTP drops: find files that are complete, claim each exactly once by
moving it, and submit it through the same pipeline as every other trigger.

SFTP sends no events and shows a file while it is still being written, so a file is ready only
when two listings ``CONVBRIDGE_SFTP_SETTLE_SECONDS`` apart (default 30) show the same size and
mtime, or, for rules with ``ready_marker: true``, once ``<name>.ready`` exists beside it. A
ready file is claimed by a plain SFTP rename to ``processing/<key>``, which fails when the
target exists: of two overlapping sweeps exactly one wins each file, and the DynamoDB claim
(storage, location, key, version, rule) still guards the job itself. The webhook moves a
claimed source to ``done/`` or ``failed/`` when its job settles (``Storage.after_settle``);
the sweep moves rejected ones there itself, and puts back into the drop what could not be
submitted now. A claim older than ``CONVBRIDGE_SFTP_CLAIM_TIMEOUT_SECONDS`` (default 3600) whose
record shows no job is returned to the drop; one whose record shows a settled job is tidied
into ``done/`` or ``failed/``. Claiming stops once the invocation has less than
``CONVBRIDGE_SFTP_SWEEP_MARGIN_SECONDS`` (default 10) left; the rest waits for the next run.
A file dropped again unchanged (same size and mtime) is the same upload to the claims: it goes
straight to where its record says; touching it makes it a new version, converted again.

One entry never stops the rest: names that are not UTF-8 or hold control characters, symbolic
links and anything else the storage will not take are left in the drop, each logged with its
reason and counted as ``refused``. A claim is checked once made: what was renamed into
``processing/`` must still be the regular file of the size and mtime that settled, so a file
swapped for a link between the listing and the claim goes back to the drop, refused, unread.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from convbridge.bridge import Bridge
from convbridge.errors import ConfigError, StorageError
from convbridge.model import CLAIM_PREFIX, DONE_PREFIX, FAILED_PREFIX, ObjectRef
from convbridge.names import unsafe_key_reason
from convbridge.pipeline import Submission, submit_all, summarize
from convbridge.pipeline.record_io import read_record
from convbridge.records import ResultRecord
from convbridge.rules import Rule
from convbridge.storage.sftp import printable

logger = logging.getLogger(__name__)

MARKER_SUFFIX = ".ready"
#: record statuses after which a source belongs in done/ or failed/
SETTLED = frozenset({"finished", "failed", "rejected"})
KEPT_FOLDERS = (CLAIM_PREFIX, DONE_PREFIX, FAILED_PREFIX)


@runtime_checkable
class Drop(Protocol):
    """What the sweep needs from a storage beyond the Storage contract (SftpStorage has it)."""

    def scan(self, location: str, directory: str, *, recursive: bool,
             skip: Callable[[str], bool] = ...,
             refused: Callable[[str, str], None] | None = ...) -> Iterator[Any]: ...

    def move(self, location: str, key: str, target: str, *, replace: bool) -> bool: ...

    def touch_access_time(self, location: str, key: str, mtime: int) -> None: ...

    def delete(self, location: str, key: str) -> None: ...

    def read_bytes(self, location: str, key: str) -> bytes: ...

    def stat(self, location: str, key: str) -> ObjectRef | None: ...

    def after_settle(self, location: str, key: str, status: str) -> None: ...


@dataclass(frozen=True)
class SweepSettings:
    settle_seconds: float = 30.0
    margin_seconds: float = 10.0
    claim_timeout_seconds: float = 3600.0

    @classmethod
    def from_bridge(cls, bridge: Bridge) -> SweepSettings:
        def number(name: str, default: float) -> float:
            raw = bridge.settings.value(name)
            try:
                value = float(raw) if raw is not None else default
            except ValueError:
                raise ConfigError(f"CONVBRIDGE_{name}={raw!r} is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"CONVBRIDGE_{name}={raw!r} must be zero or more")
            return value

        return cls(settle_seconds=number("SFTP_SETTLE_SECONDS", cls.settle_seconds),
                   margin_seconds=number("SFTP_SWEEP_MARGIN_SECONDS", cls.margin_seconds),
                   claim_timeout_seconds=number("SFTP_CLAIM_TIMEOUT_SECONDS",
                                                cls.claim_timeout_seconds))


@dataclass
class SweepReport:
    """What one sweep did; ``summary()`` is the handler's answer."""

    submissions: list[Submission] = field(default_factory=list)
    #: seen but not ready yet (still changing, no marker, or not observed long enough)
    waiting: int = 0
    #: ready but left for the next run (time ran out)
    deferred: int = 0
    #: ready but another sweep, or an earlier file of the same name, had the claim
    lost: int = 0
    returned: list[str] = field(default_factory=list)
    tidied: list[str] = field(default_factory=list)
    #: left in the drop, never claimed: printable name -> why
    refused: dict[str, str] = field(default_factory=dict)
    #: drops that could not be swept (unreachable, host key refused), with the reason
    errors: list[str] = field(default_factory=list)

    def refuse(self, location: str, name: str, reason: str) -> None:
        """Log and count an entry left in the drop, once per sweep however often it is seen
        (two listings, overlapping rules)."""
        if name not in self.refused:
            logger.warning("sftp://%s/%s left in the drop: %s", location, name, reason)
            self.refused[name] = reason

    @property
    def claimed(self) -> list[str]:
        return [s.ref.key for s in self.submissions]

    def summary(self) -> dict[str, Any]:
        return summarize(self.submissions, waiting=self.waiting, deferred=self.deferred,
                         lost=self.lost, returned=len(self.returned), tidied=len(self.tidied),
                         refused=len(self.refused), errors=self.errors)


@dataclass(frozen=True)
class _Seen:
    key: str
    size: int
    mtime: int

    @property
    def version(self) -> str:
        return f"{self.size}:{self.mtime}"


Submit = Callable[[Bridge, Iterable[ObjectRef]], list[Submission]]


def sweep(
    bridge: Bridge,
    *,
    remaining_ms: Callable[[], int] | None = None,
    config: SweepSettings | None = None,
    sleep: Callable[[float], None] = time.sleep,
    wall_clock: Callable[[], float] = time.time,
    submit: Submit = submit_all,
) -> SweepReport:
    """One pass over every swept drop the rules name. ``remaining_ms`` is the Lambda
    context's clock; without it the sweep is unbounded."""
    config = config or SweepSettings.from_bridge(bridge)
    report = SweepReport()

    def seconds_left() -> float:
        return math.inf if remaining_ms is None else remaining_ms() / 1000.0

    rules = [r for r in bridge.rules.rules if r.swept]
    drops: dict[tuple[str, str], list[Rule]] = {}
    for rule in rules:
        drops.setdefault((rule.storage, rule.location), []).append(rule)
    for (storage_name, location), members in drops.items():
        try:
            storage = _drop(bridge, storage_name)
            _tidy_claims(bridge, storage, storage_name, location, config, wall_clock(), report)
            first = _observe(bridge, storage, location, members, report)
            second = first
            if any(not rule.ready_marker for rule, _, _ in first.values()):
                if seconds_left() >= config.settle_seconds + config.margin_seconds:
                    sleep(config.settle_seconds)
                    second = _observe(bridge, storage, location, members, SweepReport())
                else:
                    logger.info("sftp://%s: too little time left to watch files settle; they "
                                "wait for the next run", location)
                    second = {k: v for k, v in first.items() if v[0].ready_marker}
                    report.waiting += len(first) - len(second)
            ready = _ready(first, second, report)
            for index, (rule, seen) in enumerate(ready):
                if seconds_left() < config.margin_seconds:
                    report.deferred += len(ready) - index
                    logger.info("sftp://%s: time is short; %d ready file(s) left for the next "
                                "run", location, len(ready) - index)
                    break
                _claim_and_submit(bridge, storage, storage_name, location, rule, seen, report,
                                  submit)
        except StorageError as exc:
            # one unreachable drop (or one whose host key is refused) must not stop the others
            logger.error("sftp://%s not swept: %s", location, exc)
            report.errors.append(f"{location}: {exc}")
    return report


def run_scheduled(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The sftp_sweep function's body: the schedule's event carries nothing the sweep needs
    beyond its arrival."""
    from convbridge import runtime

    report = runtime.run_scheduled(event, context, "sweep", lambda current, remaining: sweep(
        current, remaining_ms=remaining))
    summary = report.summary()
    if report.errors:
        # a failed invocation is what alarms watch; what did get done is logged first
        logger.info("sweep summary: %s", json.dumps({k: v for k, v in summary.items()
                                                      if k != "objects"}))
        raise StorageError("drops not swept: " + "; ".join(report.errors))
    return summary


def _drop(bridge: Bridge, storage_name: str) -> Drop:
    storage = bridge.storage(storage_name)
    if not isinstance(storage, Drop):
        raise ConfigError(f"storage {storage_name!r} cannot be swept")
    return storage


def _observe(bridge: Bridge, storage: Drop, location: str, rules: list[Rule],
             report: SweepReport) -> dict[str, tuple[Rule, _Seen, bool]]:
    """key -> (rule, what was seen, whether its ready marker exists), for files some rule
    wants; each file goes to the first rule that wants it, as rules.match decides."""
    found: dict[str, tuple[Rule, _Seen, bool]] = {}

    def skip(folder: str) -> bool:
        # the sweep's own folders and everything the bridge writes are never candidates
        return folder.startswith(KEPT_FOLDERS) or bridge.rules.is_own_write(
            ObjectRef(rules[0].storage, location, folder))

    listings: dict[tuple[str, bool], set[str]] = {}
    for rule in rules:
        listed = (rule.prefix, rule.recursive)
        if listed in listings:
            continue
        entries = list(storage.scan(
            location, rule.prefix, recursive=rule.recursive, skip=skip,
            refused=lambda name, reason: report.refuse(location, name, reason)))
        names = {e.key for e in entries}
        listings[listed] = names
        for entry in entries:
            if entry.key in found or skip(entry.key):
                continue
            ref = ObjectRef(rule.storage, location, entry.key)
            owner = bridge.rules.match(ref)
            if owner is None or owner not in rules:
                continue
            if owner.ready_marker and entry.key.endswith(MARKER_SUFFIX):
                continue
            problem = unsafe_key_reason(entry.key)
            if problem:
                report.refuse(location, printable(entry.key), problem)
                continue
            marker = f"{entry.key}{MARKER_SUFFIX}" in names
            found[entry.key] = (owner, _Seen(entry.key, entry.size, entry.mtime), marker)
    return found


def _ready(first: dict[str, tuple[Rule, _Seen, bool]],
           second: dict[str, tuple[Rule, _Seen, bool]],
           report: SweepReport) -> list[tuple[Rule, _Seen]]:
    """Files whose marker exists (marker rules) or that did not change between the two
    observations (the others), oldest first."""
    ready = []
    for key, (rule, seen, _) in first.items():
        later = second.get(key)
        if later is None:
            continue  # gone (taken by another sweep, deleted) or not observed twice
        if rule.ready_marker:
            if later[2]:
                ready.append((rule, later[1]))
            else:
                report.waiting += 1
        elif later[1] == seen:
            ready.append((rule, seen))
        else:
            report.waiting += 1
    ready.sort(key=lambda item: (item[1].mtime, item[1].key))
    return ready


def _claim_and_submit(bridge: Bridge, storage: Drop, storage_name: str, location: str,
                      rule: Rule, seen: _Seen, report: SweepReport, submit: Submit) -> None:
    claimed = CLAIM_PREFIX + seen.key
    try:
        if not storage.move(location, seen.key, claimed, replace=False):
            report.lost += 1
            logger.info("sftp://%s/%s: not claimed (another sweep took it, or an earlier file "
                        "of that name is still in %s)", location, seen.key, CLAIM_PREFIX)
            return
        if not _claimed_as_seen(storage, location, seen, claimed, report):
            return
        storage.touch_access_time(location, claimed, seen.mtime)
        if rule.ready_marker:
            storage.delete(location, seen.key + MARKER_SUFFIX)
    except StorageError as exc:
        logger.error("sftp://%s/%s: claim failed: %s", location, seen.key, exc)
        return
    ref = ObjectRef(storage_name, location, claimed, version=seen.version, size=seen.size)
    [submission] = submit(bridge, [ref])
    report.submissions.append(submission)
    try:
        if submission.status in {"rejected", "skipped"}:
            # a report says why (rejected), or the log does (skipped); either way it is done
            storage.after_settle(location, claimed, "failed")
        elif submission.status in {"retry", "error"} and storage.move(
                location, claimed, seen.key, replace=False):
            report.returned.append(seen.key)
        elif submission.status == "duplicate":
            # this very version was handled before (dropped again unchanged): its record
            # says where it belongs; a job still running moves it itself when it settles
            status, _ = _recorded(storage, location, rule, claimed, seen.version)
            if status in SETTLED:
                storage.after_settle(location, claimed, _outcome(status))
    except StorageError as exc:
        logger.error("sftp://%s/%s: could not move after %s: %s", location, claimed,
                     submission.status, exc)


def _claimed_as_seen(storage: Drop, location: str, seen: _Seen, claimed: str,
                     report: SweepReport) -> bool:
    """Whether what the rename took is the regular file that settled (same size and mtime).
    A link or folder swapped in after the listing is refused and put back, unread; a file
    rewritten since goes back to wait for the next sweep."""
    found = storage.stat(location, claimed)
    if found is not None and found.version == seen.version:
        return True
    if found is None:
        report.refuse(location, printable(seen.key), "not a regular file when claimed (a "
                      "symbolic link or folder was put in its place); put back, not read")
    else:
        report.waiting += 1
        logger.info("sftp://%s/%s changed after it settled; put back to settle again",
                    location, seen.key)
    if not storage.move(location, claimed, seen.key, replace=False):
        logger.warning("sftp://%s/%s could not be put back (%s holds a new file of that name)",
                       location, claimed, seen.key)
    return False


def _tidy_claims(bridge: Bridge, storage: Drop, storage_name: str, location: str,
                 config: SweepSettings, now: float, report: SweepReport) -> None:
    """Claims older than the timeout: a settled job's source goes to done/ or failed/ (the
    webhook could not move it), one with no job goes back to the drop. Younger claims cost
    one listing and nothing more."""
    for entry in storage.scan(location, CLAIM_PREFIX, recursive=True,
                              refused=lambda name, reason: report.refuse(location, name, reason)):
        if now - entry.atime < config.claim_timeout_seconds:
            continue
        ref = ObjectRef(storage_name, location, entry.key)
        rule = bridge.rules.match(ref)
        if rule is None:
            continue
        status, record = _recorded(storage, location, rule, entry.key,
                                   f"{entry.size}:{entry.mtime}")
        try:
            if status in SETTLED:
                storage.after_settle(location, entry.key, _outcome(status))
                report.tidied.append(entry.key)
            elif status == "submitted" and record and record.job_id:
                logger.info("sftp://%s/%s: job %s still running", location, entry.key,
                            record.job_id)
            else:
                dropped = entry.key[len(CLAIM_PREFIX):]
                if storage.move(location, entry.key, dropped, replace=False):
                    logger.warning("sftp://%s/%s: claim without a job returned to the drop",
                                   location, dropped)
                    report.returned.append(dropped)
        except StorageError as exc:
            logger.error("sftp://%s/%s: could not tidy the claim: %s", location, entry.key, exc)


def _recorded(storage: Drop, location: str, rule: Rule, key: str, version: str
              ) -> tuple[str | None, ResultRecord | None]:
    """The status in the result record of exactly this file (key and version), and the
    record; a record of an earlier file of the same name, or one unreadable now, counts as
    none."""
    try:
        record = read_record(storage, location, rule.result_key(key))
    except StorageError:
        return None, None
    if record is None or record.source.key != key or record.source.version != version:
        return None, None
    return record.status, record


def _outcome(status: str) -> str:
    return "finished" if status == "finished" else "failed"
