"""AWS API calls the S3 trigger makes per submitted upload, by operation, and the bridge's CPU
time per event: uploads delivered one by one as one-record SQS batches (the deployed path)
into the trigger of the dev stack, each call counted by a botocore ``before-call`` hook on
every client the bridge's CloudClients makes (the bench's own clients are not counted).

Two kinds of upload are measured in the same run: first uploads of a key (the claim, the
scoped write grant, the create-only record) and re-uploads, a new version of each key whose
record exists (the create-only write is refused, the record read and replaced at its
revision). Callbacks are dropped by the sandbox so the webhook, which shares the process and
the bridge's clients, makes no call while the trigger is counted. The goal is at most 3 calls
per first upload; the earlier release made 5 for every upload (claim put and update, the
``submitting`` and ``submitted`` records, AssumeRole)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Row, say
from bench.submit import _png, _sqs_batch
from convbridge.clients import CloudClients
from devstack.lambda_local import LocalContext
from devstack.sandbox import Faults
from devstack.stack import CLAIMS_TABLE, DevStack

UPLOADS = 50
GOAL_CALLS = 3
LABEL = "bench_call_label"


def bridge_cpu_seconds() -> float:
    """CPU time of the threads that run the trigger: the handler's (main) thread and the
    bridge's record workers; the in-process sandbox's threads are left out."""
    total = 0.0
    for thread in threading.enumerate():
        ours = thread is threading.main_thread() or thread.name.startswith("convbridge-")
        if ours and thread.ident is not None:
            total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return total


def _label(params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
    """What the call is for, kept in the request context for the before-call hook: for S3
    writes of result records, the record's status."""
    label = ""
    key = params.get("Key")
    if isinstance(key, str) and model.name == "PutObject" and key.startswith("results/"):
        try:
            label = f"'{json.loads(params.get('Body') or b'{}').get('status')}' record"
        except (ValueError, TypeError, AttributeError):
            label = "record"
    elif isinstance(key, str):
        label = key.split("/", 1)[0] + "/"
    elif params.get("TableName") == CLAIMS_TABLE:
        label = "claim"
    context[LABEL] = label


class CallCounter:
    """Counts calls by "service Operation (what for)" while ``counting`` is set."""

    def __init__(self) -> None:
        self.counting = False
        self.calls: Counter[str] = Counter()

    def _count(self, event_name: str, context: dict[str, Any], **_: Any) -> None:
        if self.counting:
            service, operation = event_name.split(".", 2)[1:]
            label = context.get(LABEL)
            self.calls[f"{service} {operation}" + (f" ({label})" if label else "")] += 1

    def watch(self, client: Any) -> Any:
        client.meta.events.register("before-parameter-build.*.*", _label)
        client.meta.events.register("before-call.*.*", self._count)
        return client


@contextmanager
def counted_clients(counter: CallCounter) -> Iterator[None]:
    """Every client CloudClients makes inside the block reports its calls to ``counter``."""
    original = CloudClients._client_unlocked
    watched: set[int] = set()

    def watching(self: CloudClients, service: str, config: Any,
                 endpoint_url: str | None) -> Any:
        client = original(self, service, config, endpoint_url)
        if id(client) not in watched:
            watched.add(id(client))
            counter.watch(client)
        return client

    CloudClients._client_unlocked = watching  # type: ignore[method-assign]
    try:
        yield
    finally:
        CloudClients._client_unlocked = original  # type: ignore[method-assign]


#: what the earlier release made per upload, whatever the key's history
EARLIER_RELEASE_CALLS = 5
#: the last commit of the earlier release's code path (claim put and update, two records),
#: measured in the same run as the baseline
EARLIER_RELEASE = "858a655"
#: its figures, as its own bench.aws_calls names them
_EARLIER_FIGURES = {"calls": "AWS API calls per submitted upload (S3 trigger)",
                    "cpu": "bridge CPU per event (handler and record-worker threads)"}
_EARLIER_SCRIPT = (
    "import json\n"
    "from bench.aws_calls import measure\n"
    "rows = measure()\n"
    "print('FIGURES ' + json.dumps({row.figure: row.value for row in rows}))\n"
)


@dataclass(frozen=True)
class EarlierRelease:
    """The earlier release's calls and bridge CPU per upload, or why they are missing."""

    calls: float | None = None
    cpu_ms: float | None = None
    missing: str = ""


def measure_earlier_release(ref: str = EARLIER_RELEASE) -> EarlierRelease:
    """Run the earlier release's own ``bench.aws_calls`` on its own tree (``git archive`` of
    ``ref`` into a temporary folder, first on the path), in a child process of this run."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="convbridge-earlier-") as tree:
        archive = subprocess.run(["git", "-C", str(root), "archive", ref],
                                 capture_output=True, check=False)
        if archive.returncode != 0:
            return EarlierRelease(missing=f"git archive {ref} failed: "
                                          f"{archive.stderr.decode(errors='replace').strip()}")
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tree, filter="data")
        say(f"the earlier release ({ref}), same measure on its own tree:")
        env = {**os.environ, "PYTHONPATH": f"{tree}/shared{os.pathsep}{tree}"}
        child = subprocess.run([sys.executable, "-c", _EARLIER_SCRIPT], cwd=tree, env=env,
                               capture_output=True, text=True, check=False, timeout=900)
    found = [line for line in child.stdout.splitlines() if line.startswith("FIGURES ")]
    if child.returncode != 0 or not found:
        tail = (child.stderr or child.stdout).strip().splitlines()[-1:] or ["no output"]
        return EarlierRelease(missing=f"the earlier release's bench failed: {tail[0]}")
    figures = json.loads(found[-1][len("FIGURES "):])
    return EarlierRelease(calls=figures.get(_EARLIER_FIGURES["calls"]),
                          cpu_ms=figures.get(_EARLIER_FIGURES["cpu"]))


@dataclass
class Phase:
    """The calls and CPU time of one kind of upload, summed over its events."""

    name: str
    calls: Counter[str] = field(default_factory=Counter)
    bridge_cpu: float = 0.0
    process_cpu: float = 0.0
    events: int = 0


def _deliver(stack: DevStack, counter: CallCounter, events: list[dict[str, Any]],
             phase: Phase) -> None:
    for event in events:
        counter.calls.clear()
        counter.counting = True
        cpu_started, bridge_started = time.process_time(), bridge_cpu_seconds()
        answer = stack.invoke_trigger(event, LocalContext(timeout_seconds=60))
        phase.process_cpu += time.process_time() - cpu_started
        phase.bridge_cpu += bridge_cpu_seconds() - bridge_started
        counter.counting = False
        phase.calls.update(counter.calls)
        phase.events += 1
        assert answer == {"batchItemFailures": []}, answer
        # the job runs in the in-process sandbox: let it end outside the measured window
        stack.sandbox.wait_idle(timeout=60)


def _other_png() -> bytes:
    """Another picture than ``bench.submit._png``'s: a new version of each key."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (9, 9), (30, 20, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def measure(uploads: int = UPLOADS, *, earlier: EarlierRelease | None = None) -> list[Row]:
    """Both kinds of upload, against the earlier release measured first in the same run
    (``earlier``: figures measured elsewhere, used instead)."""
    earlier = earlier or measure_earlier_release()
    if earlier.missing:
        say(f"  no same-run baseline: {earlier.missing}")
    earlier_label = f"the earlier release's code path ({EARLIER_RELEASE}), same run"
    counter = CallCounter()
    png, newer_png = _png(), _other_png()
    first, again = Phase("first upload of a key"), Phase("re-upload of a key with a record")
    with counted_clients(counter), DevStack(faults=Faults(drop_callbacks=True),
                                            moto_own_process=True) as stack:
        keys = [f"inbox/calls/{n:04d}.png" for n in range(uploads + 1)]
        for key in keys:
            stack.upload(key, png)
        events = [_sqs_batch(stack, [key]) for key in keys]
        # the first event builds the bridge and reads its secrets, once per environment
        counter.counting = True
        stack.invoke_trigger(events[0], LocalContext(timeout_seconds=60))
        counter.counting = False
        cold_calls = Counter(counter.calls)
        stack.sandbox.wait_idle(timeout=60)
        _deliver(stack, counter, events[1:], first)
        for key in keys[1:]:
            stack.upload(key, newer_png)  # a new version of every key
        _deliver(stack, counter, [_sqs_batch(stack, [key]) for key in keys[1:]], again)
        jobs = stack.sandbox.job_count()
        newest = [stack.read_json(f"results/calls/{n:04d}.png.json") for n in range(1, 3)]
    assert jobs == 2 * uploads + 1, f"{jobs} jobs for {2 * uploads + 1} submissions"
    assert all(r and r["status"] == "submitted" for r in newest), newest
    cold = ", ".join(f"{name} x{count}" for name, count in cold_calls.items()
                     if count > first.calls[name] / uploads) or "nothing more"
    rows: list[Row] = []
    for phase in (first, again):
        total = sum(phase.calls.values()) / phase.events
        say(f"{phase.name}:")
        for name, count in sorted(phase.calls.items(), key=lambda item: -item[1]):
            say(f"  {count / phase.events:5.2f} per upload  {name}")
        say(f"  {total:5.2f} per upload  total")
        rows += [Row("aws calls", f"{phase.name}: {name}", count / phase.events, "", None, "",
                     "", None, f"{count} calls over {phase.events} uploads")
                 for name, count in sorted(phase.calls.items(), key=lambda item: -item[1])]
        first_phase = phase is first
        rows.append(Row(
            "aws calls", f"AWS API calls per {phase.name} (S3 trigger)", total, "",
            earlier.calls, earlier_label if earlier.calls is not None else "",
            f"<= {GOAL_CALLS}" if first_phase else "report",
            total <= GOAL_CALLS if first_phase else None,
            f"{phase.events} one-record SQS batches after a warm-up event; the earlier release "
            f"made {EARLIER_RELEASE_CALLS} for every upload" + (
                f" ({earlier.missing})" if earlier.missing else "")
            + (f"; the first event also made {cold}" if first_phase else
               "; the refused create-only write, the record's read and its replacement")))
        cpu = phase.bridge_cpu / phase.events
        rows.append(Row(
            "aws calls", f"bridge CPU per event, {phase.name} (handler and record-worker "
            "threads)", cpu * 1000, "ms", earlier.cpu_ms,
            earlier_label if earlier.cpu_ms is not None else "",
            "< 2 ms" if first_phase else "report",
            cpu < 0.002 if first_phase else None,
            f"time.process_time around the handler: {phase.process_cpu / phase.events * 1000:.1f}"
            " ms, which also bills the in-process sandbox answering the job create"))
        say(f"  CPU per event: {cpu * 1000:.1f} ms in the bridge's threads, "
            f"{phase.process_cpu / phase.events * 1000:.1f} ms of the whole process")
    return rows


if __name__ == "__main__":
    from bench.run import table

    print("\n".join(table(measure())))
