"""The scheduled sweep of SFTP drops: find files that are complete, claim each exactly once by
moving it, and hand each claim to the claims queue, from which the same function submits it
through the same pipeline as every other trigger.

SFTP sends no events and shows a file while it is still being written, so a file is ready only
when two listings ``CONVBRIDGE_SFTP_SETTLE_SECONDS`` apart (default 30) show the same size and
mtime, or, for rules with ``ready_marker: true``, once ``<name>.ready`` exists beside it. A
ready file is claimed by a plain SFTP rename to ``processing/<key>``, which fails when the
target exists: of two overlapping sweeps exactly one wins each file, and the DynamoDB claim
(storage, location, key, version, rule) still guards the job itself.

A claimed file is not submitted here: it becomes one message on the claims queue
(:mod:`convbridge.triggers.sftp_claims`, ten per SendMessageBatch), and the function's SQS
event source (``SftpClaimsQueue``, capped by ``MaximumConcurrency``) submits it, so a drop of
100,000 files is drained by as many invocations at once as the providers can take, with the
S3 trigger's partial batch failures and backpressure. Once submitted, rejected or skipped
sources move to ``failed/``; a duplicate (the same version dropped again) goes where its
record says; transient trouble is a batch item failure that SQS delivers again (after five
receives the DLQ, and the claim timeout returns the file). A claim the queue refused is put
back into the drop at once (nothing else knows of it); one whose send broke on the way (the
message may exist) is left to the claim timeout, since putting it back could let a second
claim race a delivered message.

Listings are bounded and resumable. A drop is walked in key order, one folder listing at a
time, in windows of at most ``CONVBRIDGE_SFTP_SWEEP_WINDOW`` files (default 10,000): list a
window, wait the settle time, list the same range again, claim its ready files, then the next
window. When less than ``CONVBRIDGE_SFTP_SWEEP_MARGIN_SECONDS`` (default 10) is left, the
sweep stops and leaves a cursor (the last key it dealt with) in ``processing/`` (see
``CURSOR_KEY``), and the next run goes on after it; past the end of the drop the cursor wraps
to the start. So every run makes progress whatever the drop's size (one settle wait per
window), a file passed while it was still changing is looked at again on the next pass, and
none is skipped forever. The cursor lives in the drop it describes: it needs no table or
permission of its own, and a lost or garbled one only means starting from the top again.

A claim older than ``CONVBRIDGE_SFTP_CLAIM_TIMEOUT_SECONDS`` (default 3600) whose record shows
no job is returned to the drop; one whose record shows a settled job is tidied into ``done/``
or ``failed/``. A file dropped again unchanged (same size and mtime) is the same upload to the
claims: it goes straight to where its record says; touching it makes it a new version,
converted again.

One entry never stops the rest: names that are not UTF-8 or hold control characters, symbolic
links and anything else the storage will not take are left in the drop, each logged with its
reason and counted as ``refused``. A claim is checked once made: what was renamed into
``processing/`` must still be the regular file of the size and mtime that settled, so a file
swapped for a link between the listing and the claim goes back to the drop, refused, unread.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from convbridge import runtime
from convbridge.bridge import Bridge
from convbridge.errors import ConfigError, StorageError
from convbridge.model import CLAIM_PREFIX, DONE_PREFIX, FAILED_PREFIX, ObjectRef
from convbridge.names import unsafe_key_reason
from convbridge.pipeline import Submission
from convbridge.pipeline.record_io import read_record
from convbridge.records import ResultRecord
from convbridge.rules import Rule
from convbridge.storage.sftp import printable
from convbridge.triggers.sftp_claims import (
    BATCH_ENTRIES,
    BadClaimMessage,
    ClaimMessage,
    ClaimsQueue,
    SendOutcome,
    parse_claim,
)

logger = logging.getLogger(__name__)

MARKER_SUFFIX = ".ready"
#: record statuses after which a source belongs in done/ or failed/
SETTLED = frozenset({"finished", "failed", "rejected"})
KEPT_FOLDERS = (CLAIM_PREFIX, DONE_PREFIX, FAILED_PREFIX)
#: the sweep's own folder inside processing/: no rule may watch processing/, and the claim
#: tidy-up leaves this folder alone
SWEEP_FOLDER = f"{CLAIM_PREFIX}.convbridge-sweep/"
#: where a drop's cursor is kept: ``{"after": <key>}``, the last key the sweep dealt with
CURSOR_KEY = f"{SWEEP_FOLDER}cursor.json"


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

    def put_bytes(self, location: str, key: str, data: bytes, *, content_type: str,
                  metadata: Mapping[str, str], if_revision: str | None = ...) -> str: ...

    def stat(self, location: str, key: str) -> ObjectRef | None: ...

    def after_settle(self, location: str, key: str, status: str) -> None: ...


class ClaimSender(Protocol):
    """Where claims go (ClaimsQueue; tests pass their own)."""

    def send(self, claims: Sequence[ClaimMessage]) -> SendOutcome: ...


@dataclass(frozen=True)
class SweepSettings:
    settle_seconds: float = 30.0
    margin_seconds: float = 10.0
    claim_timeout_seconds: float = 3600.0
    #: files per bounded listing (window); each window costs one settle wait
    window_files: int = 10_000
    #: claims made at once, each on its own SFTP session: a claim is several round trips
    #: (rename, the checks around it, the access time), so one at a time leaves the
    #: connection idle most of the time
    claim_workers: int = 8

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

        def count(name: str, default: int, upper: int) -> int:
            value = number(name, default)
            if not 1 <= value <= upper or value != int(value):
                raise ConfigError(f"CONVBRIDGE_{name}={value!r} must be a whole number from 1 "
                                  f"to {upper}")
            return int(value)

        return cls(settle_seconds=number("SFTP_SETTLE_SECONDS", cls.settle_seconds),
                   margin_seconds=number("SFTP_SWEEP_MARGIN_SECONDS", cls.margin_seconds),
                   claim_timeout_seconds=number("SFTP_CLAIM_TIMEOUT_SECONDS",
                                                cls.claim_timeout_seconds),
                   window_files=count("SFTP_SWEEP_WINDOW", cls.window_files, 10**7),
                   # each is an SSH connection: servers limit them (OpenSSH's MaxStartups)
                   claim_workers=count("SFTP_CLAIM_WORKERS", cls.claim_workers, 64))


@dataclass
class SweepReport:
    """What one sweep did; ``summary()`` is the handler's answer."""

    #: claimed and handed to the claims queue, in order
    enqueued: list[str] = field(default_factory=list)
    #: seen but not ready yet (still changing, no marker, or not observed long enough)
    waiting: int = 0
    #: ready but left for the next run (time ran out)
    deferred: int = 0
    #: ready but another sweep, or an earlier file of the same name, had the claim
    lost: int = 0
    returned: list[str] = field(default_factory=list)
    tidied: list[str] = field(default_factory=list)
    #: claims the queue refused, put back into the drop
    unsent: list[str] = field(default_factory=list)
    #: claims whose send broke on the way (maybe queued): left for the claim timeout
    unknown: list[str] = field(default_factory=list)
    #: left in the drop, never claimed: printable name -> why
    refused: dict[str, str] = field(default_factory=dict)
    #: drops that could not be swept (unreachable, host key refused), with the reason
    errors: list[str] = field(default_factory=list)
    #: bounded listings worked through
    windows: int = 0
    #: per drop: the key the next run starts after ("" is the start of the drop)
    cursors: dict[str, str] = field(default_factory=dict)
    #: claims are made on several threads at once
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def refuse(self, location: str, name: str, reason: str) -> None:
        """Log and count an entry left in the drop, once per sweep however often it is seen
        (two listings, overlapping rules)."""
        with self._lock:
            if name not in self.refused:
                logger.warning("sftp://%s/%s left in the drop: %s", location, name, reason)
                self.refused[name] = reason

    def tally(self, what: Literal["waiting", "lost"]) -> None:
        with self._lock:
            setattr(self, what, getattr(self, what) + 1)

    @property
    def claimed(self) -> list[str]:
        return list(self.enqueued)

    def summary(self) -> dict[str, Any]:
        """Counts only: a drop of 100,000 files would not fit a Lambda answer file by file."""
        counts = {status: len(keys) for status, keys in (
            ("enqueued", self.enqueued), ("unsent", self.unsent), ("unknown", self.unknown))
            if keys}
        return {"counts": counts, "waiting": self.waiting, "deferred": self.deferred,
                "lost": self.lost, "returned": len(self.returned), "tidied": len(self.tidied),
                "refused": len(self.refused), "windows": self.windows,
                "cursors": dict(self.cursors), "errors": list(self.errors)}


@dataclass(frozen=True)
class _Seen:
    key: str
    size: int
    mtime: int

    @property
    def version(self) -> str:
        return f"{self.size}:{self.mtime}"


#: key -> (the rule that owns it, what was seen, whether its ready marker exists)
_Found = dict[str, tuple[Rule, _Seen, bool]]


@dataclass(frozen=True)
class _Observation:
    """One bounded listing: the wanted files, in key order, and the last key it covered
    (None when it reached the end of the drop)."""

    files: _Found
    end: str | None


@dataclass
class _DropSweep:
    """One drop (storage and location) and what sweeping it needs."""

    bridge: Bridge
    storage: Drop
    storage_name: str
    location: str
    rules: list[Rule]
    config: SweepSettings
    report: SweepReport
    queue: ClaimSender
    seconds_left: Callable[[], float]
    sleep: Callable[[float], None]


def sweep(
    bridge: Bridge,
    *,
    remaining_ms: Callable[[], int] | None = None,
    config: SweepSettings | None = None,
    sleep: Callable[[float], None] = time.sleep,
    wall_clock: Callable[[], float] = time.time,
    queue: ClaimSender | None = None,
) -> SweepReport:
    """One bounded pass over every swept drop the rules name. ``remaining_ms`` is the Lambda
    context's clock; without it the sweep is unbounded. ``queue`` defaults to the claims
    queue of ``CONVBRIDGE_SFTP_CLAIMS_QUEUE_URL``."""
    config = config or SweepSettings.from_bridge(bridge)
    report = SweepReport()

    def seconds_left() -> float:
        return math.inf if remaining_ms is None else remaining_ms() / 1000.0

    drops: dict[tuple[str, str], list[Rule]] = {}
    for rule in bridge.rules.rules:
        if rule.swept:
            drops.setdefault((rule.storage, rule.location), []).append(rule)
    if drops and queue is None:
        queue = claims_queue(bridge)
    for (storage_name, location), members in drops.items():
        assert queue is not None
        try:
            storage = _drop(bridge, storage_name)
            _tidy_claims(bridge, storage, storage_name, location, config, wall_clock(), report)
            _sweep_drop(_DropSweep(bridge, storage, storage_name, location, members, config,
                                   report, queue, seconds_left, sleep))
        except StorageError as exc:
            # one unreachable drop (or one whose host key is refused) must not stop the others
            logger.error("sftp://%s not swept: %s", location, exc)
            report.errors.append(f"{location}: {exc}")
    return report


def claims_queue(bridge: Bridge) -> ClaimsQueue:
    url = bridge.settings.required("SFTP_CLAIMS_QUEUE_URL",
                                   "to hand claimed files to the claims queue")
    return ClaimsQueue(bridge.sqs(), url)


def run_function(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """The sftp_sweep function's body: an SQS batch is claims to submit, anything else (the
    schedule's event) starts a sweep."""
    if runtime.is_sqs_event(event):
        return submit_claims(event, context)
    return run_scheduled(event, context)


def run_scheduled(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A sweep: the schedule's event carries nothing the sweep needs beyond its arrival."""
    report = runtime.run_scheduled(event, context, "sweep", lambda current, remaining: sweep(
        current, remaining_ms=remaining))
    summary = report.summary()
    if report.errors:
        # a failed invocation is what alarms watch; what did get done is logged first
        logger.info("sweep summary: %s", json.dumps(summary))
        raise StorageError("drops not swept: " + "; ".join(report.errors))
    return summary


def submit_claims(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """A batch from the claims queue: each claimed file submitted, with partial batch
    failures, backpressure deferral and the redrive policy of every SQS-fed trigger."""
    return runtime.run_batch(event, context, _submit_claim)


def _submit_claim(current: Bridge, record: Any) -> dict[str, Any]:
    try:
        claim = parse_claim(record.body)
        if not any(rule.swept and rule.storage == claim.storage
                   and rule.location == claim.location for rule in current.rules.rules):
            raise BadClaimMessage(f"{claim.storage!r} at {claim.location!r} is not a drop "
                                  "the rules sweep")
    except BadClaimMessage as exc:
        # delivering it again cannot mend it; a real claim behind it returns to the drop
        # after the claim timeout
        logger.error("claims message %s refused, not retried: %s", record.message_id, exc)
        return {"refused": str(exc)}
    return runtime.submit_queued(current, record, [claim.ref()],
                                 settled=lambda done: _move_after(current, claim, done))


def _move_after(bridge: Bridge, claim: ClaimMessage, submission: Submission) -> None:
    """What becomes of a claimed source once its submission needs no other delivery: a
    submitted one stays in processing/ (the webhook moves it when its job settles)."""
    try:
        storage = _drop(bridge, claim.storage)
        if submission.status in {"rejected", "skipped"}:
            # a report says why (rejected), or the log does (skipped); either way it is done
            storage.after_settle(claim.location, claim.key, "failed")
        elif submission.status == "duplicate":
            # this very version was handled before (dropped again unchanged): its record
            # says where it belongs; a job still running moves it itself when it settles
            rule = bridge.rules.match(claim.ref())
            if rule is None:
                return
            status, _ = _recorded(storage, claim.location, rule, claim.key, claim.version)
            if status in SETTLED:
                storage.after_settle(claim.location, claim.key, _outcome(status))
    except (StorageError, ConfigError) as exc:
        logger.error("sftp://%s/%s: could not move after %s: %s", claim.location, claim.key,
                     submission.status, exc)


def _drop(bridge: Bridge, storage_name: str) -> Drop:
    storage = bridge.storage(storage_name)
    if not isinstance(storage, Drop):
        raise ConfigError(f"storage {storage_name!r} cannot be swept")
    return storage


# -- one drop: windows from the cursor ----------------------------------------------------


def _sweep_drop(drop: _DropSweep) -> None:
    config, report = drop.config, drop.report
    start = _load_cursor(drop)
    cursor = after = start
    settles = not all(rule.ready_marker for rule in drop.rules)
    while drop.seconds_left() >= config.margin_seconds:
        if after != start and settles and (
                drop.seconds_left() < config.settle_seconds + config.margin_seconds):
            break  # another window could not be watched settling: not listed at all
        first = _observe(drop, after=after, limit=config.window_files, until=None)
        report.windows += 1
        second = first
        if any(not rule.ready_marker for rule, _, _ in first.files.values()):
            if drop.seconds_left() < config.settle_seconds + config.margin_seconds:
                logger.info("sftp://%s: too little time left to watch files settle; they "
                            "wait for the next run", drop.location)
                second = _Observation({k: v for k, v in first.files.items()
                                       if v[0].ready_marker}, first.end)
                report.waiting += len(first.files) - len(second.files)
                # the files not watched are not passed: the next run starts here again
                _claim_window(drop, _ready(first.files, second.files, report))
                break
            drop.sleep(config.settle_seconds)
            second = _observe(drop, after=after, limit=None, until=first.end)
        ready = _ready(first.files, second.files, report)
        outcome, last = _claim_window(drop, ready)
        if outcome == "queue failed":
            break  # put back or left claimed: the next run lists this window again
        if outcome == "out of time":
            cursor = last if last is not None else after
            break
        if first.end is None:
            cursor = ""  # the whole drop was passed: the next run starts at the top
            break
        cursor = after = first.end
    report.cursors[drop.location] = cursor
    if cursor != start:
        _save_cursor(drop, cursor)


def _claim_window(drop: _DropSweep, ready: list[tuple[Rule, _Seen]]
                  ) -> tuple[Literal["done", "out of time", "queue failed"], str | None]:
    """Claim and enqueue ``ready`` in key order until time is short; the outcome and the last
    key dealt with."""
    batch: list[ClaimMessage] = []
    last: str | None = None
    workers = max(1, drop.config.claim_workers)
    for index in range(0, len(ready), workers):
        if drop.seconds_left() < drop.config.margin_seconds:
            drop.report.deferred += len(ready) - index
            logger.info("sftp://%s: time is short; %d ready file(s) left for the next run",
                        drop.location, len(ready) - index)
            return ("out of time" if _enqueue(drop, batch) else "queue failed"), last
        chunk = ready[index:index + workers]
        for claim in _claim_all(drop, chunk, workers):
            if claim is not None:
                batch.append(claim)
            if len(batch) == BATCH_ENTRIES:
                if not _enqueue(drop, batch):
                    return "queue failed", last
                batch = []
        last = chunk[-1][1].key
    return ("done" if _enqueue(drop, batch) else "queue failed"), last


@functools.cache
def _claim_pool(workers: int) -> ThreadPoolExecutor:
    """Kept for the life of the execution environment, and so are its threads' SFTP sessions
    (SftpStorage keeps one per thread)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convbridge-claim")


def _claim_all(drop: _DropSweep, chunk: list[tuple[Rule, _Seen]], workers: int
               ) -> list[ClaimMessage | None]:
    """Claims of ``chunk``, made at once, in its order; the time left is checked between
    chunks, so a chunk takes about as long as one claim."""
    if workers == 1 or len(chunk) == 1:
        return [_claim(drop, rule, seen) for rule, seen in chunk]
    return list(_claim_pool(workers).map(lambda item: _claim(drop, *item), chunk))


def _enqueue(drop: _DropSweep, batch: list[ClaimMessage]) -> bool:
    """Send one batch; False when any claim of it did not certainly reach the queue."""
    if not batch:
        return True
    sent = drop.queue.send(batch)
    drop.report.enqueued.extend(c.key for c in sent.sent)
    for claim in sent.refused:
        try:
            if drop.storage.move(drop.location, claim.key, claim.dropped_key, replace=False):
                drop.report.unsent.append(claim.dropped_key)
                continue
        except StorageError as exc:
            logger.error("sftp://%s/%s: could not put back: %s", drop.location, claim.key, exc)
        drop.report.unknown.append(claim.key)  # still claimed: the claim timeout returns it
    drop.report.unknown.extend(c.key for c in sent.unknown)
    if sent.refused or sent.unknown:
        logger.error("sftp://%s: the claims queue did not take %d claim(s): %s", drop.location,
                     len(sent.refused) + len(sent.unknown), sent.reason)
        drop.report.errors.append(f"{drop.location}: the claims queue did not take "
                                  f"{len(sent.refused) + len(sent.unknown)} claim(s)")
        return False
    return True


def _claim(drop: _DropSweep, rule: Rule, seen: _Seen) -> ClaimMessage | None:
    storage, location, report = drop.storage, drop.location, drop.report
    claimed = CLAIM_PREFIX + seen.key
    try:
        if not storage.move(location, seen.key, claimed, replace=False):
            report.tally("lost")
            logger.info("sftp://%s/%s: not claimed (another sweep took it, or an earlier file "
                        "of that name is still in %s)", location, seen.key, CLAIM_PREFIX)
            return None
        if not _claimed_as_seen(storage, location, seen, claimed, report):
            return None
        storage.touch_access_time(location, claimed, seen.mtime)
        if rule.ready_marker:
            storage.delete(location, seen.key + MARKER_SUFFIX)
    except StorageError as exc:
        logger.error("sftp://%s/%s: claim failed: %s", location, seen.key, exc)
        return None
    return ClaimMessage(drop.storage_name, location, claimed, seen.version, seen.size)


def _load_cursor(drop: _DropSweep) -> str:
    """The key the last run stopped after; "" (the top) when there is none or it is not one
    the sweep wrote."""
    try:
        if drop.storage.stat(drop.location, CURSOR_KEY) is None:
            return ""
        document = json.loads(drop.storage.read_bytes(drop.location, CURSOR_KEY))
    except (StorageError, ValueError, RecursionError) as exc:
        logger.warning("sftp://%s: cursor unreadable, starting at the top: %s", drop.location,
                       exc)
        return ""
    after = document.get("after") if isinstance(document, dict) else None
    if not isinstance(after, str) or len(after) > 4096:
        logger.warning("sftp://%s: cursor is not one the sweep writes; starting at the top",
                       drop.location)
        return ""
    return after


def _save_cursor(drop: _DropSweep, after: str) -> None:
    try:
        drop.storage.put_bytes(drop.location, CURSOR_KEY, json.dumps({"after": after}).encode(),
                               content_type="application/json", metadata={})
    except StorageError as exc:
        # the next run starts from the previous cursor: files are listed again, never lost
        logger.warning("sftp://%s: could not save the cursor: %s", drop.location, exc)


# -- listings in key order ------------------------------------------------------------------


def _folder_of(key: str) -> str:
    return key.rpartition("/")[0] + "/" if "/" in key else ""


def _roots(rules: list[Rule]) -> list[str]:
    """The folders to walk, in key order, none inside another."""
    roots: list[str] = []
    for folder in sorted({_folder_of(rule.prefix) for rule in rules}):
        if not any(folder.startswith(root) for root in roots):
            roots.append(folder)
    return roots


def _all_before(folder: str, after: str) -> bool:
    """Every key under ``folder`` sorts at or before ``after``."""
    return folder < after and not after.startswith(folder)


def _in_key_order(drop: _DropSweep, after: str, enter: Callable[[str], bool],
                  names: set[str]) -> Iterator[Any]:
    """The drop's files sorting after ``after``, in key order, listing one folder at a time
    and only when reached, so a window stops listing once it is full. Every file name of a
    listed folder goes into ``names`` (for ready markers)."""

    def refused(name: str, reason: str) -> None:
        drop.report.refuse(drop.location, name, reason)

    def walk(folder: str) -> Iterator[Any]:
        below: set[str] = set()

        def note(sub: str) -> bool:
            # the storage walks folders itself; told of each one, the sweep walks them in
            # order instead, so it never descends here
            if sub.count("/") == folder.count("/") + 1 and enter(sub) and not _all_before(
                    sub, after):
                below.add(sub)
            return True

        files = list(drop.storage.scan(drop.location, folder, recursive=True, skip=note,
                                       refused=refused))
        names.update(entry.key for entry in files)
        children: list[tuple[str, Any]] = [(e.key, e) for e in files if e.key > after]
        children.extend((sub, None) for sub in below)
        for key, entry in sorted(children, key=lambda child: child[0]):
            if entry is None:
                yield from walk(key)
            else:
                yield entry

    for root in _roots(drop.rules):
        if not _all_before(root, after):
            yield from walk(root)


def _observe(drop: _DropSweep, *, after: str, limit: int | None, until: str | None
             ) -> _Observation:
    """The wanted files after ``after``: at most ``limit`` listed, or up to ``until``. Each
    goes to the first rule that wants it, as rules.match decides."""
    bridge, location, rules = drop.bridge, drop.location, drop.rules
    folders = [(rule, _folder_of(rule.prefix)) for rule in rules]

    def own(folder: str) -> bool:
        # the sweep's own folders and everything the bridge writes are never candidates
        return folder.startswith(KEPT_FOLDERS) or bridge.rules.is_own_write(
            ObjectRef(rules[0].storage, location, folder))

    def enter(folder: str) -> bool:
        return not own(folder) and any(
            (rule.recursive and folder.startswith(top)) or top.startswith(folder)
            for rule, top in folders)

    def listed(folder: str) -> bool:
        return any(folder == top or (rule.recursive and folder.startswith(top))
                   for rule, top in folders)

    names: set[str] = set()
    found: _Found = {}
    for count, entry in enumerate(_in_key_order(drop, after, enter, names), 1):
        if until is not None and entry.key > until:
            return _Observation(found, until)
        _consider(drop, entry, found, names, own, listed)
        if limit is not None and count >= limit:
            return _Observation(found, entry.key)
    return _Observation(found, None)


def _consider(drop: _DropSweep, entry: Any, found: _Found, names: set[str],
              own: Callable[[str], bool], listed: Callable[[str], bool]) -> None:
    key = entry.key
    if own(key) or not listed(_folder_of(key)):
        return
    ref = ObjectRef(drop.rules[0].storage, drop.location, key)
    owner = drop.bridge.rules.match(ref)
    if owner is None or owner not in drop.rules:
        return
    if owner.ready_marker and key.endswith(MARKER_SUFFIX):
        return
    problem = unsafe_key_reason(key)
    if problem:
        drop.report.refuse(drop.location, printable(key), problem)
        return
    marker = f"{key}{MARKER_SUFFIX}" in names
    found[key] = (owner, _Seen(key, entry.size, entry.mtime), marker)


def _ready(first: _Found, second: _Found, report: SweepReport) -> list[tuple[Rule, _Seen]]:
    """Files whose marker exists (marker rules) or that did not change between the two
    observations (the others), in key order (the cursor's)."""
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
    ready.sort(key=lambda item: item[1].key)
    return ready


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
        report.tally("waiting")
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
                              skip=lambda folder: folder == SWEEP_FOLDER,
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
