"""The sweep's decisions (ready or not, claim, return, tidy, stop in time) on an in-memory drop
with a fake clock, and the SFTP pieces around it that need no server: rule fields, the planner's
opt-in, CloudConvert's SFTP and upload tasks, host-key pins and key checks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from convbridge.errors import ConfigError, RulesError
from convbridge.model import ConversionSpec, Grant, JobSpec, ObjectRef, OutputTarget
from convbridge.pipeline import Submission
from convbridge.planner import plan_route
from convbridge.providers.cloudconvert import CloudConvert, _UploadForm
from convbridge.records import RecordSource, RecordStatus, ResultRecord
from convbridge.rules import parse_rules
from convbridge.storage.s3 import S3Storage
from convbridge.storage.sftp import Entry, PinnedHostKeys, SftpStorage, key_problem
from convbridge.triggers.sftp_sweep import SweepSettings, sweep
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
    """An SFTP drop in memory with the sweep's view of SftpStorage."""

    files: dict[str, File] = field(default_factory=dict)
    settled: list[tuple[str, str]] = field(default_factory=list)
    now: float = 1_000_000.0

    def put(self, key: str, data: bytes, mtime: int = 100) -> None:
        self.files[key] = File(data, mtime)

    def scan(self, location: str, directory: str, *, recursive: bool,
             skip: Callable[[str], bool] = lambda folder: False,
             refused: Callable[[str, str], None] | None = None) -> Iterator[Entry]:
        for key, found in list(self.files.items()):
            if not key.startswith(directory):
                continue
            rest = key[len(directory):]
            folders = rest.split("/")[:-1]
            if folders and not recursive:
                continue
            if any(skip(directory + "/".join(folders[:n + 1]) + "/")
                   for n in range(len(folders))):
                continue
            yield Entry(key, len(found.data), found.mtime, found.atime)

    def move(self, location: str, key: str, target: str, *, replace: bool) -> bool:
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

    def stat(self, location: str, key: str) -> ObjectRef | None:
        found = self.files.get(key)
        return None if found is None else ObjectRef("sftp", location, key,
                                                    f"{len(found.data)}:{found.mtime}")

    def after_settle(self, location: str, key: str, status: str) -> None:
        self.settled.append((key, status))
        target = ("done/" if status == "finished" else "failed/") + key.removeprefix(
            "processing/")
        self.move(location, key, target, replace=True)


class Scenario:
    def __init__(self, statuses: dict[str, str] | None = None) -> None:
        self.drop = FakeDrop()
        self.bridge: Any = SimpleNamespace(rules=parse_rules(RULES),
                                           storage=lambda name: self.drop)
        self.statuses = statuses or {}
        self.submitted: list[ObjectRef] = []
        self.sleeps: list[float] = []
        self.during_sleep: Callable[[], None] = lambda: None

    def submit(self, bridge: Any, refs: Iterable[ObjectRef]) -> list[Submission]:
        result = []
        for ref in refs:
            self.submitted.append(ref)
            status = self.statuses.get(ref.key.removeprefix("processing/"), "submitted")
            result.append(Submission(ref, status, rule="settle"))
        return result

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.during_sleep()

    def run(self, *, remaining: float = 900.0, settle: float = 30.0,
            margin: float = 10.0, timeout: float = 3600.0) -> Any:
        config = SweepSettings(settle_seconds=settle, margin_seconds=margin,
                               claim_timeout_seconds=timeout)
        return sweep(self.bridge, remaining_ms=lambda: int(remaining * 1000), config=config,
                     sleep=self.sleep, wall_clock=lambda: self.drop.now, submit=self.submit)


def test_only_files_unchanged_over_the_settle_time_are_claimed() -> None:
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
    assert [r.key for r in run.submitted] == ["processing/inbox/done.png",
                                              "processing/inbox/sub/deeper.png"]
    assert run.submitted[0].version == "8:50" and run.submitted[0].size == 8
    assert report.waiting == 1 and "inbox/growing.png" in run.drop.files
    assert run.drop.files["processing/inbox/done.png"].atime == int(run.drop.now)


def test_marker_rules_wait_for_the_marker_and_need_no_settle_time() -> None:
    run = Scenario()
    run.drop.put("marked/a.png", b"a")
    run.drop.put("marked/a.png.ready", b"")
    run.drop.put("marked/b.png", b"b")
    report = run.run()
    assert run.sleeps == []
    assert [r.key for r in run.submitted] == ["processing/marked/a.png"]
    assert "marked/a.png.ready" not in run.drop.files and report.waiting == 1


def test_claiming_stops_when_time_runs_short() -> None:
    run = Scenario()
    for n in range(5):
        run.drop.put(f"marked/{n}.png", b"x", mtime=n)
        run.drop.put(f"marked/{n}.png.ready", b"")
    left = iter([60.0, 60.0, 60.0, 5.0, 5.0, 5.0])
    config = SweepSettings(settle_seconds=30, margin_seconds=10)
    report = sweep(run.bridge, remaining_ms=lambda: int(next(left) * 1000), config=config,
                   sleep=run.sleep, wall_clock=lambda: run.drop.now, submit=run.submit)
    assert len(run.submitted) == 3 and report.deferred == 2
    assert sum(1 for k in run.drop.files if k.startswith("marked/") and
               not k.endswith(".ready")) == 2


def test_no_settle_wait_when_it_would_not_fit_in_the_time_left() -> None:
    run = Scenario()
    run.drop.put("inbox/a.png", b"a")
    report = run.run(remaining=35.0)
    assert run.sleeps == [] and run.submitted == [] and report.waiting == 1


def test_rejected_go_to_failed_and_transient_trouble_goes_back_to_the_drop() -> None:
    run = Scenario({"inbox/empty.png": "rejected", "inbox/busy.png": "retry",
                    "inbox/ok.png": "submitted"})
    run.drop.put("inbox/empty.png", b"")
    run.drop.put("inbox/busy.png", b"b")
    run.drop.put("inbox/ok.png", b"o")
    report = run.run()
    assert sorted(run.drop.files) == ["failed/inbox/empty.png", "inbox/busy.png",
                                      "processing/inbox/ok.png"]
    assert report.returned == ["inbox/busy.png"]


def test_a_claim_lost_to_another_sweep_is_counted_not_submitted() -> None:
    run = Scenario()
    run.drop.put("inbox/a.png", b"a")
    run.drop.put("processing/inbox/a.png", b"earlier upload of the same name")
    run.drop.files["processing/inbox/a.png"].atime = int(run.drop.now)
    report = run.run()
    assert run.submitted == [] and report.lost == 1
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
    for name, status in (("finished", "finished"), ("failed", "failed"),
                         ("running", "submitted")):
        key = f"processing/inbox/{name}.png"
        drop.put(f"results/{name}.png.json", record(key, status, "2:10", "job-1"))
    # a record of an earlier upload of the same name says nothing about this one
    drop.put("results/stale.png.json", record("processing/inbox/stale.png", "finished", "9:9"))
    report = run.run()
    assert sorted(k for k in drop.files if not k.startswith("results/")) == [
        "done/inbox/finished.png", "failed/inbox/failed.png", "processing/inbox/nojob.png",
        "processing/inbox/running.png", "processing/inbox/stale.png",
        "processing/inbox/young.png"]
    assert sorted(report.tidied) == ["processing/inbox/failed.png",
                                     "processing/inbox/finished.png"]
    assert sorted(report.returned) == ["inbox/nojob.png", "inbox/stale.png"]
    # returned files are back in the drop and, settled, claimed again in the same sweep
    assert {r.key for r in run.submitted} == {"processing/inbox/nojob.png",
                                              "processing/inbox/stale.png"}


def test_a_file_dropped_again_unchanged_goes_where_its_record_says() -> None:
    run = Scenario({"inbox/again.png": "duplicate", "inbox/running.png": "duplicate"})
    run.drop.put("inbox/again.png", b"same", mtime=5)
    run.drop.put("inbox/running.png", b"same", mtime=5)
    run.drop.put("results/again.png.json",
                 record("processing/inbox/again.png", "failed", "4:5", "job-1"))
    run.drop.put("results/running.png.json",
                 record("processing/inbox/running.png", "submitted", "4:5", "job-2"))
    run.run()
    assert "failed/inbox/again.png" in run.drop.files
    assert "processing/inbox/running.png" in run.drop.files


def test_unsafe_names_stay_in_the_drop() -> None:
    run = Scenario()
    run.drop.put("inbox/line\nbreak.png", b"x")
    run.drop.put("inbox/-rf.png", b"x")
    report = run.run()
    assert [r.key for r in run.submitted] == ["processing/inbox/-rf.png"]
    # the name is logged escaped, so it cannot break or forge a log line
    assert report.refused == {"inbox/line\\nbreak.png": "contains control characters"}


def test_a_file_rewritten_between_settling_and_its_claim_goes_back_to_settle_again() -> None:
    run = Scenario()
    run.drop.put("inbox/first.png", b"1", mtime=10)
    run.drop.put("inbox/second.png", b"2", mtime=20)
    submit = run.submit

    def rewrite_the_second(bridge: Any, refs: Iterable[ObjectRef]) -> list[Submission]:
        run.drop.put("inbox/second.png", b"2, rewritten", mtime=30)
        return submit(bridge, refs)

    run.submit = rewrite_the_second  # type: ignore[method-assign]
    report = run.run()
    assert [r.key for r in run.submitted] == ["processing/inbox/first.png"]
    assert run.drop.files["inbox/second.png"].data == b"2, rewritten"
    assert "processing/inbox/second.png" not in run.drop.files
    assert report.waiting == 1 and report.refused == {}


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
