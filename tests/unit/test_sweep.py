"""The sweep's decisions (ready or not, claim, queue, return, tidy, stop in time, resume from
the cursor) on an in-memory drop with a fake clock and queue, the claims consumer's moves and
its reading of hostile messages, and the SFTP pieces around it that need no server: rule
fields, the planner's opt-in, CloudConvert's SFTP and upload tasks, host-key pins and key
checks."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convbridge.errors import ConfigError, RulesError
from convbridge.model import ConversionSpec, Grant, JobSpec, ObjectRef, OutputTarget
from convbridge.names import unsafe_key_reason
from convbridge.pipeline import Submission
from convbridge.planner import plan_route
from convbridge.providers.cloudconvert import CloudConvert, _UploadForm
from convbridge.records import RecordSource, RecordStatus, ResultRecord
from convbridge.rules import parse_rules
from convbridge.storage.s3 import S3Storage
from convbridge.storage.sftp import Entry, PinnedHostKeys, SftpStorage, key_problem
from convbridge.triggers.sftp_claims import BadClaimMessage, ClaimMessage, SendOutcome, parse_claim
from convbridge.triggers.sftp_sweep import SweepSettings, _move_after, _submit_claim, sweep
from devstack.servers_sftp import new_key

LOCATION = "sftp.example:2222"
RULES = f"""
version: 1
rules:
  - name: settle
    match: {{storage: sftp, location: "{LOCATION}", prefix: inbox/, suffixes: [.png]}}
    convert: {{to: pdf}}
    provider: cloudconvert
    recursive: true
    outputs: outbox/
    results: results/
    failures: failures/
  - name: marked
    match: {{storage: sftp, location: "{LOCATION}", prefix: marked/, suffixes: [.png]}}
    convert: {{to: pdf}}
    provider: cloudconvert
    ready_marker: true
    outputs: outbox2/
    results: results2/
    failures: failures2/
"""


@dataclass
class File:
    data: bytes
    mtime: int
    atime: int = 0


@dataclass
class FakeDrop:
    """An SFTP drop in memory with the sweep's view of SftpStorage: a listing tells ``skip``
    of each folder directly below the one listed, as SftpStorage.scan does."""

    files: dict[str, File] = field(default_factory=dict)
    settled: list[tuple[str, str]] = field(default_factory=list)
    now: float = 1_000_000.0
    during_move: Callable[[str], None] = lambda key: None
    listings: int = 0

    def put(self, key: str, data: bytes, mtime: int = 100) -> None:
        self.files[key] = File(data, mtime)

    def scan(self, location: str, directory: str, *, recursive: bool,
             skip: Callable[[str], bool] = lambda folder: False,
             refused: Callable[[str, str], None] | None = None) -> Iterator[Entry]:
        self.listings += 1
        entered: dict[str, bool] = {}
        for key, found in list(self.files.items()):
            if not key.startswith(directory):
                continue
            folders = key[len(directory):].split("/")[:-1]
            if folders and not recursive:
                continue
            below = [directory + "/".join(folders[:n + 1]) + "/" for n in range(len(folders))]
            if any(not entered.setdefault(folder, not skip(folder)) for folder in below):
                continue
            yield Entry(key, len(found.data), found.mtime, found.atime)

    def move(self, location: str, key: str, target: str, *, replace: bool) -> bool:
        self.during_move(key)
        if key not in self.files or (target in self.files and not replace):
            return False
        self.files[target] = self.files.pop(key)
        return True

    def touch_access_time(self, location: str, key: str, mtime: int) -> None:
        self.files[key].atime = int(self.now)

    def delete(self, location: str, key: str) -> None:
        self.files.pop(key, None)

    def read_bytes(self, location: str, key: str) -> bytes:
        return self.files[key].data

    def put_bytes(self, location: str, key: str, data: bytes, *, content_type: str,
                  metadata: Any, if_revision: str | None = None) -> str:
        self.files[key] = File(data, int(self.now))
        return "rev"

    def stat(self, location: str, key: str) -> ObjectRef | None:
        found = self.files.get(key)
        return None if found is None else ObjectRef("sftp", location, key,
                                                    f"{len(found.data)}:{found.mtime}")

    def after_settle(self, location: str, key: str, status: str) -> None:
        self.settled.append((key, status))
        target = ("done/" if status == "finished" else "failed/") + key.removeprefix(
            "processing/")
        self.move(location, key, target, replace=True)

    def sources(self) -> list[str]:
        """Every file but the records and the sweep's cursor."""
        return sorted(k for k in self.files
                      if not k.startswith(("results", "processing/.convbridge-sweep/")))


@dataclass
class FakeQueue:
    """The claims queue: what was sent, in order; ``refuse``/``break_on`` make a send fail
    the two ways SQS can."""

    sent: list[ClaimMessage] = field(default_factory=list)
    refuse: bool = False
    broken: bool = False
    calls: int = 0

    def send(self, claims: Any) -> SendOutcome:
        self.calls += 1
        assert 0 < len(claims) <= 10
        if self.refuse:
            return SendOutcome(refused=tuple(claims), reason="AccessDenied")
        if self.broken:
            return SendOutcome(unknown=tuple(claims), reason="read timeout")
        # a body the consumer cannot read back would be lost: every one goes through it
        self.sent.extend(parse_claim(claim.body()) for claim in claims)
        return SendOutcome(sent=tuple(claims))

    @property
    def keys(self) -> list[str]:
        return [claim.key for claim in self.sent]


class Scenario:
    def __init__(self) -> None:
        self.drop = FakeDrop()
        self.bridge: Any = SimpleNamespace(rules=parse_rules(RULES),
                                           storage=lambda name: self.drop)
        self.queue = FakeQueue()
        self.sleeps: list[float] = []
        self.during_sleep: Callable[[], None] = lambda: None

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.during_sleep()

    def run(self, *, remaining: float | Callable[[], float] = 900.0, settle: float = 30.0,
            margin: float = 10.0, timeout: float = 3600.0, window: int = 10_000,
            workers: int = 1) -> Any:
        # one claim at a time unless a test says otherwise: the fake clocks count claims
        config = SweepSettings(settle_seconds=settle, margin_seconds=margin,
                               claim_timeout_seconds=timeout, window_files=window,
                               claim_workers=workers)
        left = remaining if callable(remaining) else (lambda: remaining)
        return sweep(self.bridge, remaining_ms=lambda: int(left() * 1000), config=config,
                     sleep=self.sleep, wall_clock=lambda: self.drop.now, queue=self.queue)


def test_only_files_unchanged_over_the_settle_time_are_claimed_and_queued() -> None:
    run = Scenario()
    run.drop.put("inbox/done.png", b"complete", mtime=50)
    run.drop.put("inbox/sub/deeper.png", b"complete too", mtime=60)
    run.drop.put("inbox/growing.png", b"part", mtime=70)
    run.drop.put("inbox/notes.txt", b"not wanted")
    run.drop.put("outbox/ignored.png", b"not watched")

    def grow() -> None:
        run.drop.put("inbox/growing.png", b"part and more", mtime=71)

    run.during_sleep = grow
    report = run.run()
    assert run.sleeps == [30.0]
    assert run.queue.keys == ["processing/inbox/done.png", "processing/inbox/sub/deeper.png"]
    assert run.queue.sent[0] == ClaimMessage("sftp", LOCATION, "processing/inbox/done.png",
                                             "8:50", 8)
    assert report.waiting == 1 and "inbox/growing.png" in run.drop.files
    assert run.drop.files["processing/inbox/done.png"].atime == int(run.drop.now)
    assert report.summary()["counts"] == {"enqueued": 2}
    # a drop passed whole leaves the cursor at the top: nothing written
    assert report.cursors == {LOCATION: ""} and "processing/.convbridge-sweep/cursor.json" \
        not in run.drop.files


def test_marker_rules_wait_for_the_marker_and_need_no_settle_time() -> None:
    run = Scenario()
    run.drop.put("marked/a.png", b"a")
    run.drop.put("marked/a.png.ready", b"")
    run.drop.put("marked/b.png", b"b")
    report = run.run()
    assert run.sleeps == []
    assert run.queue.keys == ["processing/marked/a.png"]
    assert "marked/a.png.ready" not in run.drop.files and report.waiting == 1


def test_a_sweep_interrupted_at_its_deadline_resumes_without_double_claims() -> None:
    run = Scenario()
    for n in range(25):
        run.drop.put(f"inbox/f{n:02d}.png", b"x", mtime=n)
    # each claim takes 10 s of a 130 s invocation (margin 10, settle 30)
    clock = {"used": 0.0}
    moved = run.drop.move

    def slow_move(location: str, key: str, target: str, *, replace: bool) -> bool:
        clock["used"] += 10.0
        return moved(location, key, target, replace=replace)

    run.drop.move = slow_move  # type: ignore[method-assign]
    reports = []

    def invocation() -> Any:
        clock["used"] = 0.0
        reports.append(run.run(remaining=lambda: 130.0 - clock["used"], window=20))
        return reports[-1]

    first = invocation()
    # 13 claimed before the margin; the cursor names the last one
    assert len(first.enqueued) == 13 and first.deferred == 7
    assert first.cursors == {LOCATION: "inbox/f12.png"}
    assert json.loads(run.drop.files["processing/.convbridge-sweep/cursor.json"].data) == {
        "after": "inbox/f12.png"}
    invocation()
    invocation()
    # the next run goes on from there, past the end of the drop (wrapping to the top), and
    # every file was queued once
    assert reports[1].enqueued[0] == "processing/inbox/f13.png"
    assert reports[1].cursors == {LOCATION: ""}
    assert Counter(run.queue.keys) == Counter(f"processing/inbox/f{n:02d}.png"
                                              for n in range(25))
    assert not [k for k in run.drop.files if k.startswith("inbox/")]
    assert reports[2].enqueued == []


def test_windows_bound_each_listing_and_the_cursor_wraps_to_files_passed_while_changing(
) -> None:
    run = Scenario()
    for n in range(7):
        run.drop.put(f"inbox/f{n}.png", b"x", mtime=n)

    def grow_f1() -> None:
        if "inbox/f1.png" in run.drop.files:
            run.drop.put("inbox/f1.png", b"x" * (len(run.sleeps) + 1), mtime=50)

    run.during_sleep = grow_f1
    report = run.run(window=3)
    # three windows (3 + 3 + 1 files), one settle wait each, f1 still changing in its own
    assert report.windows == 3 and run.sleeps == [30.0] * 3
    assert "processing/inbox/f1.png" not in run.queue.keys and report.waiting == 1
    assert report.cursors == {LOCATION: ""}
    run.during_sleep = lambda: None
    again = run.run(window=3)
    assert again.enqueued == ["processing/inbox/f1.png"]
    assert Counter(run.queue.keys) == Counter(f"processing/inbox/f{n}.png" for n in range(7))


def test_the_cursor_skips_folders_it_has_passed_without_listing_them() -> None:
    run = Scenario()
    for folder in "abcdef":
        run.drop.put(f"inbox/{folder}/1.png", b"x")
    moves: list[str] = []
    run.drop.during_move = moves.append
    report = run.run(remaining=lambda: 40.0 if len(moves) < 3 else 5.0, settle=0, window=100)
    assert report.cursors == {LOCATION: "inbox/c/1.png"}
    run.drop.listings = 0
    run.run(settle=0)
    # inbox/, c (it holds the cursor), d, e and f, twice (two observations), and the claim
    # folder once: a and b, wholly before the cursor, are not listed again
    assert run.drop.listings == 2 * 5 + 1
    assert len(run.queue.sent) == 6


def test_claims_made_at_once_keep_the_key_order_and_claim_each_file_once() -> None:
    run = Scenario()
    keys = [f"inbox/{n % 4}/f{n:02d}.png" for n in range(37)]
    for key in keys:
        run.drop.put(key, b"x")
    run.drop.put("processing/inbox/0/f00.png", b"an earlier file of that name")
    run.drop.files["processing/inbox/0/f00.png"].atime = int(run.drop.now)
    report = run.run(workers=4, window=5)
    assert run.queue.keys == sorted(f"processing/{key}" for key in keys[1:])
    assert report.lost == 1 and report.cursors == {LOCATION: ""}
    assert run.drop.sources() == sorted(["inbox/0/f00.png", "processing/inbox/0/f00.png",
                                         *(f"processing/{key}" for key in keys[1:])])


def test_no_settle_wait_when_it_would_not_fit_in_the_time_left() -> None:
    run = Scenario()
    run.drop.put("inbox/a.png", b"a")
    report = run.run(remaining=35.0)
    assert run.sleeps == [] and run.queue.sent == [] and report.waiting == 1
    assert report.cursors == {LOCATION: ""}


def test_claims_the_queue_refuses_go_back_to_the_drop_and_the_cursor_stays() -> None:
    run = Scenario()
    for n in range(3):
        run.drop.put(f"inbox/{n}.png", b"x")
    run.queue.refuse = True
    report = run.run()
    assert sorted(report.unsent) == ["inbox/0.png", "inbox/1.png", "inbox/2.png"]
    assert run.drop.sources() == ["inbox/0.png", "inbox/1.png", "inbox/2.png"]
    assert report.errors and "claims queue" in report.errors[0]
    run.queue.refuse = False
    assert len(run.run().enqueued) == 3


def test_claims_whose_send_broke_stay_claimed_for_the_claim_timeout() -> None:
    run = Scenario()
    run.drop.put("inbox/a.png", b"x")
    run.queue.broken = True
    report = run.run()
    # the message may exist: putting the file back could claim it a second time
    assert report.unknown == ["processing/inbox/a.png"] and report.errors
    assert run.drop.sources() == ["processing/inbox/a.png"]


def test_a_claim_lost_to_another_sweep_is_counted_not_queued() -> None:
    run = Scenario()
    run.drop.put("inbox/a.png", b"a")
    run.drop.put("processing/inbox/a.png", b"earlier upload of the same name")
    run.drop.files["processing/inbox/a.png"].atime = int(run.drop.now)
    report = run.run()
    assert run.queue.sent == [] and report.lost == 1
    assert run.drop.files["processing/inbox/a.png"].data == b"earlier upload of the same name"


def record(key: str, status: RecordStatus, version: str, job_id: str | None = None) -> bytes:
    return json.dumps(ResultRecord(status=status, source=RecordSource("sftp", "drop", key, version),
                                   rule="r", provider="cloudconvert", job_id=job_id).to_json()
                      ).encode()


def test_old_claims_are_tidied_or_returned_young_ones_left_alone() -> None:
    run = Scenario()
    drop = run.drop
    old = int(drop.now) - 7200
    for name in ("finished", "failed", "running", "nojob", "stale", "young"):
        drop.put(f"processing/inbox/{name}.png", b"xx", mtime=10)
        drop.files[f"processing/inbox/{name}.png"].atime = old
    drop.files["processing/inbox/young.png"].atime = int(drop.now) - 60
    # the cursor is no claim, however old
    drop.put("processing/.convbridge-sweep/cursor.json", b'{"after": ""}')
    for name, status in (("finished", "finished"), ("failed", "failed"),
                         ("running", "submitted")):
        key = f"processing/inbox/{name}.png"
        drop.put(f"results/{name}.png.json", record(key, status, "2:10", "job-1"))
    # a record of an earlier upload of the same name says nothing about this one
    drop.put("results/stale.png.json", record("processing/inbox/stale.png", "finished", "9:9"))
    report = run.run()
    assert drop.sources() == [
        "done/inbox/finished.png", "failed/inbox/failed.png", "processing/inbox/nojob.png",
        "processing/inbox/running.png", "processing/inbox/stale.png",
        "processing/inbox/young.png"]
    assert sorted(report.tidied) == ["processing/inbox/failed.png",
                                     "processing/inbox/finished.png"]
    assert sorted(report.returned) == ["inbox/nojob.png", "inbox/stale.png"]
    # returned files are back in the drop and, settled, claimed again in the same sweep
    assert set(run.queue.keys) == {"processing/inbox/nojob.png", "processing/inbox/stale.png"}


def test_unsafe_names_stay_in_the_drop() -> None:
    run = Scenario()
    run.drop.put("inbox/line\nbreak.png", b"x")
    run.drop.put("inbox/-rf.png", b"x")
    report = run.run()
    assert run.queue.keys == ["processing/inbox/-rf.png"]
    # the name is logged escaped, so it cannot break or forge a log line
    assert report.refused == {"inbox/line\\nbreak.png": "contains control characters"}


def test_a_file_rewritten_between_settling_and_its_claim_goes_back_to_settle_again() -> None:
    run = Scenario()
    run.drop.put("inbox/first.png", b"1", mtime=10)
    run.drop.put("inbox/second.png", b"2", mtime=20)

    def rewrite_the_second(key: str) -> None:
        if key == "inbox/first.png":
            run.drop.put("inbox/second.png", b"2, rewritten", mtime=30)

    run.drop.during_move = rewrite_the_second
    report = run.run()
    assert run.queue.keys == ["processing/inbox/first.png"]
    assert run.drop.files["inbox/second.png"].data == b"2, rewritten"
    assert "processing/inbox/second.png" not in run.drop.files
    assert report.waiting == 1 and report.refused == {}


@dataclass(frozen=True)
class Timing:
    files: int
    window: int
    #: invocation length in claims: how many claims fit before the margin
    claims_per_run: int


@settings(max_examples=40, deadline=None)
@given(st.builds(Timing, files=st.integers(0, 40), window=st.integers(1, 12),
                 claims_per_run=st.integers(1, 15)),
       st.sets(st.integers(0, 39), max_size=5))
def test_runs_of_any_length_drain_any_drop_claiming_each_file_once(
        timing: Timing, changing: set[int]) -> None:
    run = Scenario()
    keys = [f"inbox/{n % 3}/f{n:02d}.png" for n in range(timing.files)]
    for key in keys:
        run.drop.put(key, b"x")
    clock = {"claims": 0}
    moved = run.drop.move

    def counted(location: str, key: str, target: str, *, replace: bool) -> bool:
        clock["claims"] += 1
        return moved(location, key, target, replace=replace)

    run.drop.move = counted  # type: ignore[method-assign]
    grown: set[int] = set()

    def grow_once() -> None:
        # some files are still being written the first time they are watched
        for n in changing - grown:
            if n < timing.files and keys[n] in run.drop.files:
                run.drop.put(keys[n], b"xy", mtime=7)
                grown.add(n)

    run.during_sleep = grow_once
    runs = 0
    while any(k.startswith("inbox/") for k in run.drop.files):
        clock["claims"] = 0
        report = run.run(settle=0, margin=10,
                         remaining=lambda: 9.5 + timing.claims_per_run - clock["claims"],
                         window=timing.window)
        # each run inside its deadline: no claim once less than the margin was left
        assert clock["claims"] <= timing.claims_per_run
        assert report.errors == []
        runs += 1
        assert runs <= 4 * (timing.files // min(timing.window, timing.claims_per_run) + 2)
    assert Counter(run.queue.keys) == Counter(f"processing/{key}" for key in keys)


# -- the claims queue's consumer ------------------------------------------------------------


CLAIM = ClaimMessage("sftp", LOCATION, "processing/inbox/a.png", "4:5", 4)


def consumer(drop: FakeDrop) -> Any:
    return SimpleNamespace(rules=parse_rules(RULES), storage=lambda name: drop)


@pytest.mark.parametrize(("status", "where"), [
    ("submitted", "processing/inbox/a.png"), ("rejected", "failed/inbox/a.png"),
    ("skipped", "failed/inbox/a.png")])
def test_after_a_submit_the_source_goes_where_the_sweep_put_it(status: str,
                                                               where: str) -> None:
    drop = FakeDrop()
    drop.put("processing/inbox/a.png", b"same", mtime=5)
    _move_after(consumer(drop), CLAIM, Submission(CLAIM.ref(), status))  # type: ignore[arg-type]
    assert drop.sources() == [where]


@pytest.mark.parametrize(("recorded", "where"), [
    ("failed", "failed/inbox/a.png"), ("finished", "done/inbox/a.png"),
    ("submitted", "processing/inbox/a.png")])
def test_a_file_dropped_again_unchanged_goes_where_its_record_says(recorded: RecordStatus,
                                                                   where: str) -> None:
    drop = FakeDrop()
    drop.put("processing/inbox/a.png", b"same", mtime=5)
    drop.put("results/a.png.json", record("processing/inbox/a.png", recorded, "4:5", "job-1"))
    _move_after(consumer(drop), CLAIM, Submission(CLAIM.ref(), "duplicate"))
    assert drop.sources() == [where]


HOSTILE_BODIES = [
    "", "null", "[]", '"text"', "{", "{}" * 10_000,
    json.dumps({"kind": "convbridge.sftp-claim", "v": 1}),
    CLAIM.body().replace('"v": 1', '"v": true'),
    CLAIM.body().replace("processing/inbox/a.png", "inbox/a.png"),
    CLAIM.body().replace("processing/inbox/a.png", "processing/../../etc/passwd"),
    CLAIM.body().replace("processing/inbox/a.png", "processing/inbox/a\\n.png"),
    CLAIM.body().replace('"4:5"', '"5:5"'),
    CLAIM.body().replace('"4:5"', '"4:five"'),
    CLAIM.body().replace('"size": 4', '"size": -4'),
    CLAIM.body().replace('"size": 4', '"size": 4, "extra": 1'),
    "[" * 100_000,
]


@pytest.mark.parametrize("body", HOSTILE_BODIES, ids=range(len(HOSTILE_BODIES)))
def test_hostile_claims_messages_are_refused_with_a_reason(body: str) -> None:
    with pytest.raises(BadClaimMessage) as refused:
        parse_claim(body)
    assert str(refused.value)


def test_a_claim_for_a_drop_no_rule_sweeps_is_acknowledged_and_touches_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    drop = FakeDrop()
    drop.put("processing/inbox/a.png", b"same", mtime=5)
    elsewhere = ClaimMessage("sftp", "evil.example:22", CLAIM.key, CLAIM.version, CLAIM.size)
    for body in (elsewhere.body(), "not json"):
        answer = _submit_claim(consumer(drop), SimpleNamespace(body=body, message_id="m-1"))
        assert "refused" in answer
    assert drop.sources() == ["processing/inbox/a.png"]
    assert "m-1" in caplog.text and "not a drop the rules sweep" in caplog.text


@settings(max_examples=200, deadline=None)
@given(st.one_of(
    st.text(max_size=300),
    st.dictionaries(st.sampled_from(["kind", "v", "storage", "location", "key", "version",
                                     "size", "x"]),
                    st.one_of(st.none(), st.booleans(), st.integers(-3, 10**20),
                              st.text(max_size=20), st.just("convbridge.sftp-claim"),
                              st.just("processing/a.png"), st.just("4:5")),
                    max_size=8).map(json.dumps)))
def test_any_body_parses_to_a_claim_or_a_clear_refusal(body: str) -> None:
    try:
        claim = parse_claim(body)
    except BadClaimMessage:
        return
    assert claim.key.startswith("processing/") and parse_claim(claim.body()) == claim


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1,
               max_size=60).filter(lambda name: "/" not in name and unsafe_key_reason(
                   f"inbox/{name}") is None),  # the names the sweep claims at all
       st.integers(0, 2**40), st.integers(0, 2**33))
def test_every_claim_the_sweep_writes_reads_back_the_same(name: str, size: int,
                                                          mtime: int) -> None:
    claim = ClaimMessage("sftp", LOCATION, f"processing/inbox/{name}", f"{size}:{mtime}", size)
    assert claim.body().isascii() and parse_claim(claim.body()) == claim


# -- the parts around the sweep ----------------------------------------------------------


def test_rule_fields_for_sweeps_are_validated() -> None:
    rules = parse_rules(RULES)
    settle, marked = rules.rules
    assert settle.recursive and not settle.ready_marker and not settle.hand_over_account
    assert marked.ready_marker
    claimed = ObjectRef("sftp", LOCATION, "processing/inbox/a/b.png")
    assert rules.match(claimed) is settle
    assert settle.output_key(claimed.key) == "outbox/a/b.png.pdf"
    assert settle.result_key(claimed.key) == "results/a/b.png.json"
    bad = """
version: 1
rules:
  - name: s3-sweep
    match: {storage: s3, location: b, prefix: in/}
    convert: {to: pdf}
    provider: cloudconvert
    recursive: true
    hand_over_account: "yes"
    outputs: out/
    results: res/
    failures: fail/
  - name: watches-claims
    match: {storage: sftp, location: h, prefix: processing/}
    convert: {to: pdf}
    provider: cloudconvert
    outputs: processing/out/
    results: res/
    failures: fail/
"""
    with pytest.raises(RulesError) as problems:
        parse_rules(bad)
    text = str(problems.value)
    assert "apply to swept storages only" in text
    assert "hand_over_account: must be true or false" in text
    assert "match.prefix: 'processing/' is inside" in text
    assert "outputs: 'processing/out/' is inside processing/" in text


def test_the_account_is_planned_only_for_rules_that_opt_in() -> None:
    default = plan_route(SftpStorage, CloudConvert, "presigned_url")
    assert (default.route, default.read_grant, default.write_grant) == ("relay", "upload", None)
    opted = plan_route(SftpStorage, CloudConvert, "presigned_url", hand_over_account=True)
    assert (opted.route, opted.read_grant, opted.write_grant) == ("native", "sftp_account",
                                                                  "sftp_account")
    # the opt-in changes nothing for storages with scoped grants
    assert plan_route(S3Storage, CloudConvert, "presigned_url", hand_over_account=True) == \
        plan_route(S3Storage, CloudConvert, "presigned_url")


def job_spec(read: Grant, write: Grant | None) -> JobSpec:
    source = ObjectRef("sftp", LOCATION, "processing/inbox/a b.png", "3:4", 3)
    return JobSpec(source=source, rule="settle",
                   conversion=ConversionSpec("png", "pdf"), route="native" if write else "relay",
                   read_grant=read, write_grant=write,
                   output=OutputTarget("sftp", LOCATION, "outbox/a b.pdf"),
                   context_token="token", webhook_url="https://hooks.example/cb",
                   filename="a b.png")


def account_grant(key: str) -> Grant:
    return Grant(kind="sftp_account", storage="sftp", location=LOCATION, scope="account",
                 expires_at=datetime.now(UTC), key=key,
                 secret={"host": "sftp.example", "port": "2222", "username": "drop",
                         "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n..."})


def test_cloudconvert_sftp_tasks_use_the_documented_fields() -> None:
    provider = CloudConvert(api_key="k", signing_secret="s", base_url="https://x/v2",
                            http=None)
    job = provider.build_job(job_spec(account_grant("/drop/processing/inbox/a b.png"),
                                      account_grant("/drop/outbox/a b.pdf")))
    tasks = job["tasks"]
    assert tasks["import-source"] == {
        "operation": "import/sftp", "host": "sftp.example", "port": 2222, "username": "drop",
        "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n...",
        "file": "/drop/processing/inbox/a b.png", "filename": "a b.png"}
    assert tasks["export-output"] == {
        "operation": "export/sftp", "host": "sftp.example", "port": 2222, "username": "drop",
        "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\n...",
        "file": "/drop/outbox/a b.pdf", "input": "convert"}
    upload = Grant(kind="upload", storage="sftp", location=LOCATION, scope="none",
                   expires_at=datetime.now(UTC), key="processing/inbox/a b.png")
    relayed = provider.build_job(job_spec(upload, None))["tasks"]
    assert relayed["import-source"] == {"operation": "import/upload"}
    assert relayed["export-output"] == {"operation": "export/url", "input": "convert"}


def test_the_upload_form_streams_with_a_known_length_every_time() -> None:
    opened = []

    def open_stream() -> Iterator[bytes]:
        opened.append(1)
        yield b"ab"
        yield b"c"

    form = _UploadForm({"expires": 1, "signature": "s"}, 'we"ird\nname.png', 3, open_stream)
    for _ in range(2):
        body = b"".join(form)
        assert len(body) == form.length
        assert body.index(b'name="signature"') < body.index(b'name="file"')
        assert b'filename="we%22ird%0Aname.png"' in body and b"\r\n\r\nabc\r\n--" in body
    assert len(opened) == 2
    short = _UploadForm({}, "x", 5, open_stream)
    with pytest.raises(Exception, match="changed while it was uploaded"):
        b"".join(short)


def test_host_key_pins_parse_and_refuse_garbage() -> None:
    _, public = new_key()
    kind, blob = public.split()
    assert len(PinnedHostKeys(f"{public} comment").expected("any", 22)) == 1
    known = PinnedHostKeys(f"[h]:2222 {kind} {blob}")
    assert len(known.expected("h", 2222)) == 1 and known.expected("h", 22) == []
    for garbage in ("", "# only a comment", "ssh-ed25519 not-base64!", "host ssh-ed25519"):
        with pytest.raises(ConfigError):
            PinnedHostKeys(garbage)


@pytest.mark.parametrize(("key", "problem"), [
    ("inbox/a.png", None), ("-rf", None), ("..png", None), ("a b/ü.png", None),
    ("../x", "empty, '.' or '..' segments"), ("a/../b", "empty, '.' or '..' segments"),
    ("a//b", "empty, '.' or '..' segments"), ("/abs", "absolute"),
    ("a\nb", "control characters"), ("", "empty"),
])
def test_key_problems(key: str, problem: str | None) -> None:
    assert key_problem(key) == problem


@pytest.mark.parametrize(("environ", "problem"), [
    ({"SFTP_SWEEP_WINDOW": "0"}, "SFTP_SWEEP_WINDOW"),
    ({"SFTP_SWEEP_WINDOW": "2.5"}, "SFTP_SWEEP_WINDOW"),
    ({"SFTP_CLAIM_WORKERS": "65"}, "SFTP_CLAIM_WORKERS"),
    ({"SFTP_SETTLE_SECONDS": "soon"}, "SFTP_SETTLE_SECONDS"),
])
def test_sweep_knobs_out_of_range_fail_the_cold_start(environ: dict[str, str],
                                                      problem: str) -> None:
    bridge: Any = SimpleNamespace(settings=SimpleNamespace(value=environ.get))
    with pytest.raises(ConfigError, match=problem):
        SweepSettings.from_bridge(bridge)


def test_sweep_knobs_are_read_from_the_environment() -> None:
    environ = {"SFTP_SWEEP_WINDOW": "500", "SFTP_CLAIM_WORKERS": "2",
               "SFTP_SWEEP_MARGIN_SECONDS": "4"}
    bridge: Any = SimpleNamespace(settings=SimpleNamespace(value=environ.get))
    assert SweepSettings.from_bridge(bridge) == SweepSettings(
        margin_seconds=4, window_files=500, claim_workers=2)
