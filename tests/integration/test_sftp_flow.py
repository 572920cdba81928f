"""The SFTP drop -> sweep -> claims queue -> sweep function -> CloudConvert v2 -> SFTP flow
against a real SFTP server (OpenSSH's sshd with a chrooted account when root, asyncssh
otherwise), moto (the claims queue and its dead-letter queue), the sandbox, and the real sweep
and webhook handlers. A server that cannot start fails these tests; it never skips them."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from convbridge.bridge import Bridge
from convbridge.errors import StorageError
from convbridge.triggers.sftp_sweep import CURSOR_KEY, SweepSettings, sweep
from devstack.harness.sftp import SftpHarness
from devstack.lambda_local import LocalContext
from devstack.servers_sftp import new_key
from devstack.stack import DevStack
from tests.conftest import png_bytes


@pytest.fixture
def sftp_stack() -> Iterator[DevStack]:
    with DevStack(storage=SftpHarness()) as running:
        yield running


def harness(stack: DevStack) -> SftpHarness:
    assert isinstance(stack.harness, SftpHarness)
    return stack.harness


def sweep_once(stack: DevStack) -> dict[str, Any]:
    summary = stack.trigger(stack.event_for(""))
    stack.wait()
    return summary


def test_drop_becomes_a_pdf_a_record_and_the_source_moves_to_done(sftp_stack: DevStack) -> None:
    sftp_stack.upload("inbox/a/my photo.png", png_bytes())
    sftp_stack.upload("inbox/broken.png", b"\x89PNG\r\n\x1a\nnot an image at all")
    summary = sweep_once(sftp_stack)
    assert summary["counts"] == {"enqueued": 2}
    record = sftp_stack.read_json("results/a/my photo.png.json")
    assert record is not None and record["status"] == "finished"
    assert record["route"] == "relay"  # no rule opted in: the account never left the bridge
    assert record["outputs"][0]["key"] == "outbox/a/my photo.png.pdf"
    pdf = harness(sftp_stack).read_bytes("outbox/a/my photo.png.pdf") or b""
    assert pdf.startswith(b"%PDF") and record["outputs"][0]["size"] == len(pdf)
    report = sftp_stack.read_json("failures/broken.png.json")
    assert report is not None and report["error"]["code"] == "CONVERSION_FAILED"
    assert report["error"]["task"] == "convert" and report["job_id"]
    left = sftp_stack.objects()
    assert "done/inbox/a/my photo.png" in left and "failed/inbox/broken.png" in left
    assert not [k for k in left if k.startswith(("inbox/", "processing/"))]
    for job in sftp_stack.sandbox.jobs():
        operations = [t["operation"] for t in job["tasks"]]
        assert operations == ["import/upload", "convert", "export/url"]
    # a second sweep finds nothing to do
    assert sweep_once(sftp_stack)["counts"] == {}
    assert len(sftp_stack.sandbox.jobs()) == 2


@pytest.mark.parametrize("auth", ["password", "key"])
def test_a_rule_that_opts_in_hands_over_the_dedicated_account(auth: str) -> None:
    with DevStack(storage=SftpHarness(hand_over_account=True, auth=auth)) as stack:  # type: ignore[arg-type]
        stack.upload("inbox/x.png", png_bytes())
        assert sweep_once(stack)["counts"] == {"enqueued": 1}
        record = stack.read_json("results/x.png.json")
        assert record is not None and record["status"] == "finished"
        assert record["route"] == "native"
        [job] = stack.sandbox.jobs()
        tasks = {t["operation"]: t["payload"] for t in job["tasks"]}
        assert set(tasks) == {"import/sftp", "convert", "export/sftp"}
        account = harness(stack).server
        assert tasks["import/sftp"]["file"] == "/drop/processing/inbox/x.png"  # claimed
        assert tasks["import/sftp"]["port"] == account.port
        assert tasks["import/sftp"]["username"] == account.username
        credential = "password" if auth == "password" else "private_key"
        for operation in ("import/sftp", "export/sftp"):
            # sent (the sandbox logged in with it) and, as at CloudConvert, never shown again
            assert credential in tasks[operation] and tasks[operation][credential] is None
        assert tasks["export/sftp"]["file"] == "/drop/outbox/x.png.pdf"
        assert (harness(stack).read_bytes("outbox/x.png.pdf") or b"").startswith(b"%PDF")
        assert "done/inbox/x.png" in stack.objects()


def test_a_file_still_being_written_is_not_picked(sftp_stack: DevStack) -> None:
    data = png_bytes((400, 300))
    sftp_stack.upload("inbox/ready.png", png_bytes())
    writer = harness(sftp_stack).connect()
    harness(sftp_stack).makedirs("inbox/growing.png")
    handle = writer.open("/drop/inbox/growing.png", "wb")
    stop = threading.Event()

    def grow() -> None:
        for start in range(0, len(data) - 1, 32):
            if stop.is_set():
                return
            handle.write(data[start:start + 32])
            handle.flush()
            time.sleep(0.1)

    grower = threading.Thread(target=grow)
    grower.start()
    try:
        summary = sweep_once(sftp_stack)
    finally:
        stop.set()
        grower.join()
    assert summary["counts"] == {"enqueued": 1} and summary["waiting"] == 1
    assert "processing/inbox/ready.png" in sftp_stack.objects() or (
        "done/inbox/ready.png" in sftp_stack.objects())
    assert "inbox/growing.png" in sftp_stack.objects()
    # finished and closed: the next sweep takes it, whole
    handle.write(data[handle.tell():])
    handle.close()
    writer.close()
    assert sweep_once(sftp_stack)["counts"] == {"enqueued": 1}
    record = sftp_stack.read_json("results/growing.png.json")
    assert record is not None and record["status"] == "finished"
    assert record["source"]["size"] == len(data)


def test_two_sweeps_at_once_never_claim_the_same_file(sftp_stack: DevStack) -> None:
    keys = [f"inbox/batch/{n:02d}.png" for n in range(16)]
    for key in keys:
        sftp_stack.upload(key, png_bytes())
    # two Lambda instances: separate bridges, connections and claim clients
    bridges = [Bridge.from_env(), Bridge.from_env()]
    reports: list[Any] = [None, None]
    start = threading.Barrier(2)

    def run(index: int) -> None:
        context = LocalContext()
        bridges[index].claims.register_lambda_context(context)
        start.wait()
        reports[index] = sweep(bridges[index], remaining_ms=context.get_remaining_time_in_millis)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sftp_stack.wait()
    claimed = [set(report.claimed) for report in reports]
    assert not claimed[0] & claimed[1]
    assert claimed[0] | claimed[1] == {f"processing/{key}" for key in keys}
    assert len(sftp_stack.sandbox.jobs()) == len(keys)
    assert sorted(k for k in sftp_stack.objects() if k.startswith("done/")) == sorted(
        f"done/{key}" for key in keys)


def test_an_empty_file_is_reported_not_converted(sftp_stack: DevStack) -> None:
    sftp_stack.upload("inbox/empty.png", b"")
    summary = sweep_once(sftp_stack)
    assert summary["counts"] == {"enqueued": 1}
    report = sftp_stack.read_json("failures/empty.png.json")
    assert report is not None and report["error"]["code"] == "EMPTY_OBJECT"
    assert sftp_stack.sandbox.jobs() == []
    assert "failed/inbox/empty.png" in sftp_stack.objects()


HOSTILE = ["inbox/with space .png", "inbox/ünïcødé ñame.png", "inbox/-rf.png",
           "inbox/--help.png", "inbox/..png", "inbox/a..b.png", "inbox/-dir/x.png"]


@pytest.mark.parametrize("hand_over_account", [False, True], ids=["relay", "account"])
def test_hostile_names_convert_without_leaving_the_drop(hand_over_account: bool) -> None:
    with DevStack(storage=SftpHarness(hand_over_account=hand_over_account)) as running:
        check_hostile_names(running)


def check_hostile_names(sftp_stack: DevStack) -> None:
    for key in HOSTILE:
        sftp_stack.upload(key, png_bytes())
    drop = harness(sftp_stack)
    drop.upload("inbox/line\nbreak.png", png_bytes())
    # a link planted in the drop is not a file the bridge will read
    drop.client.symlink("/drop/outbox", "/drop/inbox/link.png")
    summary = sweep_once(sftp_stack)
    assert summary["counts"] == {"enqueued": len(HOSTILE)}
    assert summary["refused"] == 2  # the control character and the link
    for key in HOSTILE:
        relative = key.removeprefix("inbox/")
        record = sftp_stack.read_json(f"results/{relative}.json")
        assert record is not None and record["status"] == "finished", key
        output = f"outbox/{relative}.pdf"
        assert (drop.read_bytes(output) or b"").startswith(b"%PDF"), output
        assert f"done/{key}" in sftp_stack.objects()
    assert "inbox/line\nbreak.png" in sftp_stack.objects()
    assert drop.client.lstat("/drop/inbox/link.png") is not None
    # everything the bridge wrote is below the drop, as the account sees it
    server = drop.server
    if server.backend == "openssh" and server.drop_path is not None:
        outside = [p for p in server.drop_path.parent.iterdir() if p.name != "drop"]
        assert outside == []


def test_a_server_with_another_host_key_is_refused_before_anything_is_read() -> None:
    _, other_key = new_key()
    with DevStack(storage=SftpHarness(pinned_host_key=other_key)) as stack:
        stack.upload("inbox/secret.png", png_bytes())
        before = stack.objects()
        server = harness(stack).server
        logged = len(server.log_text())
        with pytest.raises(StorageError, match="not the pinned one"):
            stack.trigger(stack.event_for(""))
        assert stack.objects() == before
        assert stack.sandbox.jobs() == []
        if server.backend == "openssh":
            time.sleep(0.2)
            attempts = server.log_text()[logged:]
            assert "Connection from" in attempts  # the sweep did knock ...
            assert "Accepted" not in attempts and "Failed" not in attempts  # ... never logged in


def test_the_account_never_reaches_a_log_line(capfd: pytest.CaptureFixture[str],
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    with DevStack(storage=SftpHarness(hand_over_account=True, auth="password")) as stack:
        stack.upload("inbox/s.png", png_bytes())
        stack.upload("inbox/t.png", b"corrupt")
        sweep_once(stack)
        server = harness(stack).server
        secrets = [server.password, server.private_key.splitlines()[1]]
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert "submitted" in logged and "dedicated chrooted account" in logged
    for secret in secrets:
        assert secret not in logged


def outside_the_drop(stack: DevStack, name: str, data: bytes) -> tuple[str, Path]:
    """A file the account owns and can reach, but outside its drop (beside it in the chroot):
    (its path as the account sees it, its path on this machine). Made on the server's disk,
    since the account cannot create folders there itself."""
    server = harness(stack).server
    assert server.drop_path is not None
    drop_owner = server.drop_path.stat()
    folder = server.drop_path.parent / "private"
    folder.mkdir(mode=0o755, exist_ok=True)
    local = folder / name
    local.write_bytes(data)
    os.chown(local, drop_owner.st_uid, drop_owner.st_gid)
    os.utime(local, (1_000_000, 1_000_000))
    return f"/private/{name}", local


def test_names_that_are_not_utf8_or_hold_control_characters_are_left_and_the_rest_converted(
        sftp_stack: DevStack, capfd: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    sftp_stack.upload("inbox/first.png", png_bytes())
    sftp_stack.upload("inbox/sub/second.png", png_bytes())
    client = harness(sftp_stack).client
    # what an old client in a Latin-1 locale sends: the bytes of "café.png", not UTF-8
    with client.open(b"/drop/inbox/caf\xe9.png", "wb") as handle:
        handle.write(png_bytes())
    for folder in (b"/drop/inbox/bad\xffdir", "/drop/inbox/line\nfolder"):
        client.mkdir(folder)
        inner = (folder if isinstance(folder, bytes) else folder.encode()) + b"/inner.png"
        with client.open(inner, "wb") as handle:
            handle.write(png_bytes())
    summary = sweep_once(sftp_stack)
    assert summary["errors"] == [] and summary["counts"] == {"enqueued": 2}
    assert summary["refused"] == 3
    for key in ("first.png", "sub/second.png"):
        record = sftp_stack.read_json(f"results/{key}.json")
        assert record is not None and record["status"] == "finished", key
    assert len(sftp_stack.sandbox.jobs()) == 2
    # the badly named ones stay where they were, untouched (looked at on the server's disk:
    # paramiko's own listing cannot decode them either)
    drop = harness(sftp_stack).server.drop_path
    assert drop is not None
    assert {b"caf\xe9.png", b"bad\xffdir", b"line\nfolder"} <= set(
        os.listdir(bytes(drop) + b"/inbox"))
    assert os.path.exists(bytes(drop) + b"/inbox/bad\xffdir/inner.png")
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert "caf\\xe9.png" in logged and "not valid UTF-8" in logged
    assert "line\\nfolder" in logged and "control characters" in logged


def test_a_file_swapped_for_a_link_after_listing_is_never_read_nor_touched(
        sftp_stack: DevStack) -> None:
    client = harness(sftp_stack).client
    secret_png = png_bytes((31, 17))
    target, secret = outside_the_drop(sftp_stack, "secret.png", secret_png)
    for name in ("1-early.png", "2-later.png", "3-last.png"):  # claimed in this order
        sftp_stack.upload(f"inbox/{name}", png_bytes())
    swapped: list[str] = []

    def swap(key: str) -> None:
        client.remove(f"/drop/{key}")
        client.symlink(target, f"/drop/{key}")
        swapped.append(key)

    bridge = Bridge.from_env()
    storage: Any = bridge.storage("sftp")
    move = storage.move

    def move_swapping(location: str, key: str, claimed: str, *, replace: bool) -> bool:
        if key == "inbox/2-later.png" and not swapped:
            swap("processing/inbox/1-early.png")  # claimed, not read yet
            swap("inbox/2-later.png")  # listed and settled, not claimed yet
        return bool(move(location, key, claimed, replace=replace))

    storage.move = move_swapping
    context = LocalContext()
    bridge.claims.register_lambda_context(context)
    # one claim at a time: the swap happens between two claims
    config = replace(SweepSettings.from_bridge(bridge), claim_workers=1)
    report = sweep(bridge, remaining_ms=context.get_remaining_time_in_millis, config=config)
    sftp_stack.wait(timeout=60)
    assert report.errors == []
    assert len(sftp_stack.sandbox.jobs()) == 1  # only 3-last.png: the secret was never sent
    record = sftp_stack.read_json("results/3-last.png.json")
    assert record is not None and record["status"] == "finished"
    for name in ("1-early.png", "2-later.png"):
        record = sftp_stack.read_json(f"results/{name}.json")
        assert record is None or record["status"] != "finished", name
        assert not harness(sftp_stack).read_bytes(f"outbox/{name[:-4]}.pdf")
    # the link claimed before the swap stays a link where it is: its submission failed on
    # every delivery and the claim ended in the dead-letter queue; the other went back
    assert stat.S_ISLNK(client.lstat("/drop/processing/inbox/1-early.png").st_mode or 0)
    assert stat.S_ISLNK(client.lstat("/drop/inbox/2-later.png").st_mode or 0)
    assert report.enqueued == ["processing/inbox/1-early.png", "processing/inbox/3-last.png"]
    dead = dead_letters(sftp_stack)
    assert [m["key"] for m in dead] == ["processing/inbox/1-early.png"]
    assert list(report.refused) == ["inbox/2-later.png"]
    assert "symbolic link" in report.refused["inbox/2-later.png"]
    # nothing was written through a link: the secret keeps its bytes and its times
    assert secret.read_bytes() == secret_png and secret.stat().st_mtime == 1_000_000
    # and a later sweep leaves the links alone
    assert sweep_once(sftp_stack)["counts"] == {}
    assert len(sftp_stack.sandbox.jobs()) == 1


def dead_letters(stack: DevStack) -> list[dict[str, Any]]:
    """The claims in the claims queue's dead-letter queue, read and left there."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    found = sqs.receive_message(QueueUrl=stack.claims_dead_letter_url, MaxNumberOfMessages=10,
                                VisibilityTimeout=0).get("Messages", [])
    return [json.loads(m["Body"]) for m in found]


class ShortContext(LocalContext):
    """A Lambda context with little time whose clock moves 0.2 s each time it is read,
    so the deadline falls at the same point of a sweep on a fast machine and a slow one."""

    def get_remaining_time_in_millis(self) -> int:
        self.timeout_seconds -= 0.2
        return max(0, int(self.timeout_seconds * 1000))


def test_a_sweep_interrupted_at_its_deadline_resumes_without_double_claims() -> None:
    # one claim at a time, so the context's clock (one look per claim) cuts the same place
    with DevStack(storage=SftpHarness(), env={"CONVBRIDGE_SFTP_CLAIM_WORKERS": "1"}) as stack:
        check_interrupted_sweeps_resume(stack)


def check_interrupted_sweeps_resume(sftp_stack: DevStack) -> None:
    keys = [f"inbox/part-{n // 10}/{n:02d}.png" for n in range(30)]
    for key in keys:
        sftp_stack.upload(key, png_bytes())
    summaries = []
    for _ in range(6):
        # 5 s, a 2 s margin and a 1 s settle wait: about a dozen claims per run
        summaries.append(sftp_stack.invoke_trigger(sftp_stack.event_for(""),
                                                 ShortContext(timeout_seconds=5.0)))
        if not sftp_stack.objects("inbox/"):
            break
    first = summaries[0]
    assert 0 < first["counts"]["enqueued"] < len(keys) and first["deferred"] > 0
    cursor = first["cursors"][harness(sftp_stack).location]
    assert cursor in keys
    assert len(summaries) > 2  # the drop took several runs, each resuming after the last
    assert summaries[-1]["cursors"] == {harness(sftp_stack).location: ""}
    assert sum(s["counts"].get("enqueued", 0) for s in summaries) == len(keys)
    assert sum(s["lost"] for s in summaries) == 0
    sftp_stack.wait(timeout=120)
    # every file submitted once by the claims consumer, and each ended with its record
    jobs = sftp_stack.sandbox.jobs()
    assert len(jobs) == len(keys)
    for key in keys:
        record = sftp_stack.read_json(f"results/{key.removeprefix('inbox/')}.json")
        assert record is not None and record["status"] == "finished", key
    assert Counter(k for k in sftp_stack.objects("done/")) == Counter(f"done/{k}" for k in keys)
    assert dead_letters(sftp_stack) == []
    assert harness(sftp_stack).read_bytes(CURSOR_KEY) is not None


@pytest.mark.parametrize("hand_over_account", [False, True], ids=["relay", "account"])
def test_an_outbox_replaced_by_a_link_to_inbox_gets_a_failure_report_not_a_loop(
        hand_over_account: bool) -> None:
    with DevStack(storage=SftpHarness(hand_over_account=hand_over_account)) as stack:
        client = harness(stack).client
        stack.upload("inbox/x.png", png_bytes())
        client.mkdir("/drop/outbox")
        client.rmdir("/drop/outbox")
        client.symlink("/drop/inbox", "/drop/outbox")
        assert sweep_once(stack)["counts"] == {"enqueued": 1}
        report = stack.read_json("failures/x.png.json")
        assert report is not None, stack.objects()
        assert report["error"]["code"] == "OUTPUT_UNAVAILABLE"
        assert "symbolic link" in report["error"]["message"]
        assert "outbox" in report["error"]["message"]
        # nothing landed in the watched folder, so nothing there starts another job
        assert client.listdir("/drop/inbox") == []
        assert "failed/inbox/x.png" in stack.objects()
        assert sweep_once(stack)["counts"] == {}


def test_hostile_claims_messages_are_acknowledged_and_move_nothing(sftp_stack: DevStack) -> None:
    sftp_stack.upload("inbox/kept.png", png_bytes())
    forged = {"kind": "convbridge.sftp-claim", "v": 1, "storage": "sftp",
              "location": "elsewhere.example:22", "key": "processing/inbox/kept.png",
              "version": "1:1", "size": 1}
    sqs = boto3.client("sqs", region_name="us-east-1")
    for body in ("not json", "{}", '{"kind": "convbridge.sftp-claim", "v": 1}',
                 json.dumps(forged), "\u2028" * 50):
        sqs.send_message(QueueUrl=sftp_stack.claims_queue_url, MessageBody=body)
    sftp_stack.wait(timeout=60)
    # each refused with its reason on the first delivery: none retried into the DLQ, no job,
    # and the drop as it was
    assert dead_letters(sftp_stack) == []
    assert sftp_stack.sandbox.jobs() == []
    assert sftp_stack.objects() == {"inbox/kept.png": len(png_bytes())}
