"""A big SFTP drop drained across sweep runs: 100,000 files in one drop (``--files`` to
change), swept by the real sweep handler in runs with a short deadline (``--run-seconds``, 60
by default, so several runs are needed), each claiming what fits and leaving a cursor for the
next, against the local SFTP server (OpenSSH when root), with moto and the provider sandbox
each in a process of their own (the sandbox holding its callbacks back), so this process runs
the sweep and little else.

Reported: the number of runs and the longest (each must end inside its deadline), files per
second of the first run (listing, settling, claiming and enqueueing), every file claimed and
enqueued exactly once (the claims queue's messages are counted key by key), an empty re-sweep
against a bare listing of the same drop in the same run (goal at most 2x), and the first run's
peak RSS growth. Then the real consumer (the sweep function on the claims queue, a few pollers
like an event source mapping's concurrency) submits from the queue for ``--drain-seconds``;
what it did not reach is counted, never submitted: the row notes say how many were submitted
and how many only enqueued.

moto's SendMessageBatch slows down with the depth of the queue (140 ms a call at 1,000
messages, 700 ms at 4,000, against 6 ms on a short queue), which SQS does not: 100,000
messages left in moto would measure moto. So while the sweeps run, a collector here takes
each message off the claims queue as it arrives and keeps its body; for the drain, the bodies
are put back on the queue a hundred at a time, ahead of the consumer. The sweep's sends and
the consumer's receives are moto's SQS throughout. moto's receive is slow the same way (it
checks each message against the retention period by computing every queue attribute, each a
scan of all messages): the moto process reads the retention period directly instead, the
same check (``devstack.moto_speedups``, which every dev-stack moto applies). A benchmark,
not a test; ``make test`` does not run it."""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import boto3

from devstack.harness.sftp import SftpHarness
from devstack.lambda_local import LocalContext, SqsPoller
from devstack.sandbox import Faults
from devstack.servers import free_ports
from devstack.stack import DevStack

FILES = 100_000
RUN_SECONDS = 60.0
DRAIN_SECONDS = 180.0
#: pollers on the claims queue during the drain: the event source's MaximumConcurrency here
CONSUMERS = 4


def say(message: str) -> None:
    print(message, flush=True)


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _fill(harness: SftpHarness, count: int) -> list[str]:
    """Files straight onto the server's disk (an SFTP upload each would take longer than the
    sweep), owned by the account as if it had uploaded them, 100 to a folder; their keys."""
    drop = harness.server.drop_path
    assert drop is not None
    owner = drop.stat()
    png = _png()
    keys = []
    for number in range(count):
        relative = f"inbox/batch-{number // 100:04d}/photo {number:06d}.png"
        path = drop / relative
        if not path.parent.exists():
            path.parent.mkdir(parents=True)
            for made in (path.parent, path.parent.parent):
                os.chown(made, owner.st_uid, owner.st_gid)
        path.write_bytes(png)
        os.chown(path, owner.st_uid, owner.st_gid)
        keys.append(relative)
    return keys


SANDBOX = """
import sys
from devstack.sandbox import Faults, Sandbox
sandbox = Sandbox(api_key=sys.argv[1], signing_secret=sys.argv[2], port=int(sys.argv[3]),
                  faults=Faults(callback_delay_seconds=3600.0))
sandbox.start()
print("ready", flush=True)
sys.stdin.read()
"""


def _sandbox_process(api_key: str, signing_secret: str) -> tuple[subprocess.Popen[str], str]:
    port = free_ports(1)[0]
    process = subprocess.Popen([sys.executable, "-c", SANDBOX, api_key, signing_secret,
                                str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process, f"http://127.0.0.1:{port}/v2"


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(count: int = FILES, *, run_seconds: float = RUN_SECONDS,
            drain_seconds: float = DRAIN_SECONDS, consumers: int = CONSUMERS
            ) -> dict[str, float]:
    harness = SftpHarness(settle_seconds=1.0)
    api_key, signing_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
    provider, url = _sandbox_process(api_key, signing_secret)
    stack = DevStack(storage=harness, moto_own_process=True,
                     env={"CONVBRIDGE_CLOUDCONVERT_URL": url},
                     faults=Faults(callback_delay_seconds=3600.0))
    # the bridge is given the keys of the sandbox it talks to (the in-process one idles)
    stack.api_key, stack.signing_secret = api_key, signing_secret
    try:
        with stack:
            return _drain(stack, harness, count, run_seconds, drain_seconds, consumers)
    finally:
        provider.kill()
        provider.wait()


def _sweep_runs(stack: DevStack, count: int, run_seconds: float
                ) -> tuple[list[tuple[float, dict[str, Any]]], float]:
    """Sweep runs until every file was enqueued; each run's duration and answer, and the peak
    RSS growth over the first."""
    runs: list[tuple[float, dict[str, Any]]] = []
    rss_before = _peak_rss_mb()
    rss_growth = 0.0
    enqueued = 0
    while enqueued < count and len(runs) < 200:
        started = time.perf_counter()
        summary = stack.invoke_trigger(stack.event_for(""),
                                       LocalContext(timeout_seconds=run_seconds))
        elapsed = time.perf_counter() - started
        if not runs:
            rss_growth = _peak_rss_mb() - rss_before
        runs.append((elapsed, summary))
        enqueued += summary["counts"].get("enqueued", 0)
        say(f"  run {len(runs)}: {elapsed:.1f} s, enqueued {summary['counts']}, deferred "
            f"{summary['deferred']}, waiting {summary['waiting']}, lost {summary['lost']}, "
            f"windows {summary['windows']}, cursor {list(summary['cursors'].values())}")
        if summary["errors"] or not summary["counts"].get("enqueued"):
            break
    return runs, rss_growth


COLLECTOR = """
import sys, boto3
sqs = boto3.client("sqs", region_name="us-east-1")
url, out = sys.argv[1], open(sys.argv[2], "w")
import select
def take():
    messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                   VisibilityTimeout=600).get("Messages", [])
    for m in messages:
        out.write(m["Body"] + "\\n")
    if messages:
        sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)])
    return bool(messages)
while not select.select([sys.stdin], [], [], 0)[0]:
    if not take():
        select.select([sys.stdin], [], [], 0.05)
while take():
    pass
out.close()
"""


class Collector:
    """Takes every message off the claims queue as it arrives and keeps its body (see the
    module's docstring for why), in a process of its own so that it keeps up with the sweep's
    claiming threads."""

    def __init__(self, url: str, keep: Path) -> None:
        self._url, self._keep = url, keep
        self.bodies: list[str] = []
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Collector:
        self._process = subprocess.Popen([sys.executable, "-c", COLLECTOR, self._url,
                                          str(self._keep)], stdin=subprocess.PIPE, text=True)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write("stop\n")
        self._process.stdin.close()
        self._process.wait(timeout=600)
        self.bodies = self._keep.read_text().splitlines()


def _drain(stack: DevStack, harness: SftpHarness, count: int, run_seconds: float,
           drain_seconds: float, consumers: int) -> dict[str, float]:
    say(f"SFTP big drop bench: {count} files, sweep runs of {run_seconds:.0f} s, server "
        f"{harness.server.backend} on {harness.location}")
    assert stack.claims_poller is not None and stack.claims_queue_url is not None
    stack.claims_poller.stop()  # the drop is claimed first; the consumer drains it after
    sqs = boto3.client("sqs", region_name="us-east-1")
    started = time.perf_counter()
    keys = _fill(harness, count)
    say(f"  drop filled in {time.perf_counter() - started:.1f} s")
    with tempfile.TemporaryDirectory() as folder, Collector(
            stack.claims_queue_url, Path(folder) / "claims.jsonl") as collector:
        runs, rss_growth = _sweep_runs(stack, count, run_seconds)
    collected = Counter(json.loads(body)["key"] for body in collector.bodies)
    expected = Counter(f"processing/{key}" for key in keys)
    once = collected == expected
    say(f"  messages on the claims queue: {len(collector.bodies)}; every file enqueued exactly "
        f"once: {once}")
    if not once:
        twice = [k for k, n in collected.items() if n > 1][:5]
        missing = list((expected - collected).elements())[:5]
        say(f"  NOT exactly once: twice {twice}, missing {missing}")
    first_seconds, first = runs[0]
    first_enqueued = first["counts"].get("enqueued", 0)
    longest = max(seconds for seconds, _ in runs)
    enqueued = sum(summary["counts"].get("enqueued", 0) for _, summary in runs)
    say(f"  {len(runs)} runs, longest {longest:.1f} s (deadline {run_seconds:.0f} s); first "
        f"run {first_enqueued} files in {first_seconds:.1f} s "
        f"({first_enqueued / first_seconds:.0f} files/s); {enqueued} enqueued in all")
    left = harness.objects("inbox/")
    say(f"  left in the drop: {len(left)}; peak RSS growth over the first run {rss_growth:.0f} MB")

    started = time.perf_counter()
    again = stack.invoke_trigger(stack.event_for(""), LocalContext(timeout_seconds=run_seconds))
    resweep = time.perf_counter() - started
    started = time.perf_counter()
    listed = harness.objects("")
    listing = time.perf_counter() - started
    say(f"  empty re-sweep: {resweep * 1000:.0f} ms (counts {again['counts']}); bare listing "
        f"of the same drop ({len(listed)} files): {listing * 1000:.0f} ms, "
        f"{resweep / listing:.2f}x")

    consumed: Counter[str] = Counter()
    lock = threading.Lock()
    handler = stack.trigger_module.handler

    def consume(event: dict[str, Any], context: Any) -> dict[str, Any]:
        answer: dict[str, Any] = handler(event, context)
        failed = {f["itemIdentifier"] for f in answer.get("batchItemFailures", [])}
        with lock:
            consumed.update(json.loads(r["body"])["key"] for r in event["Records"]
                            if r["messageId"] not in failed)
        return answer

    pollers = [SqsPoller(sqs, stack.claims_queue_url, consume).start()
               for _ in range(consumers)]
    held = list(collector.bodies)
    deadline = time.monotonic() + drain_seconds
    while time.monotonic() < deadline:
        depth = int(sqs.get_queue_attributes(
            QueueUrl=stack.claims_queue_url, AttributeNames=["ApproximateNumberOfMessages"])[
                "Attributes"]["ApproximateNumberOfMessages"])
        while held and depth < 100:
            batch, held = held[:10], held[10:]
            sqs.send_message_batch(QueueUrl=stack.claims_queue_url, Entries=[
                {"Id": str(n), "MessageBody": body} for n, body in enumerate(batch)])
            depth += len(batch)
        time.sleep(0.5)
    for poller in pollers:
        poller.stop()
    submitted = sum(consumed.values())
    say(f"  consumer: {submitted} submitted in {drain_seconds:.0f} s with {consumers} pollers "
        f"({submitted / drain_seconds:.1f} files/s)")
    records = len(harness.objects("results/"))
    queued = _read_the_rest(sqs, stack.claims_queue_url) + Counter(
        json.loads(body)["key"] for body in held)
    handed = Counter(consumed) + queued
    say(f"  records written: {records}; only enqueued, not submitted: {sum(queued.values())}; "
        f"each message submitted or left once: {handed == expected}")
    once = once and handed == expected
    return {"files": count, "runs": len(runs), "longest_run_seconds": longest,
            "run_seconds": run_seconds, "first_run_seconds": first_seconds,
            "first_run_enqueued": first_enqueued,
            "files_per_second": first_enqueued / first_seconds, "enqueued": enqueued,
            "exactly_once": float(once), "left_in_drop": len(left),
            "rss_growth_mb": rss_growth, "resweep_seconds": resweep,
            "listing_seconds": listing, "submitted": submitted, "records": records,
            "drain_seconds": drain_seconds, "only_enqueued": sum(queued.values())}


def _read_the_rest(sqs: Any, url: str) -> Counter[str]:
    """Every message left on the claims queue, received, counted by key and deleted."""
    found: Counter[str] = Counter()
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                       VisibilityTimeout=600).get("Messages", [])
        if not messages:
            return found
        found.update(json.loads(m["Body"])["key"] for m in messages)
        sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=FILES)
    parser.add_argument("--run-seconds", type=float, default=RUN_SECONDS)
    parser.add_argument("--drain-seconds", type=float, default=DRAIN_SECONDS)
    parser.add_argument("--consumers", type=int, default=CONSUMERS)
    args = parser.parse_args(argv)
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    # the consumer's EMF lines would bury the figures
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    figures = measure(args.files, run_seconds=args.run_seconds,
                      drain_seconds=args.drain_seconds, consumers=args.consumers)
    say("  " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in figures.items()))
    from bench.run import table
    from bench.sweep import rows

    for line in table(rows(figures)):
        say(line)
    return 0 if figures["exactly_once"] else 1


if __name__ == "__main__":
    sys.exit(main())
