"""AWS API calls the S3 trigger makes per submitted upload, by operation, and the bridge's CPU
time per event: uploads delivered one by one as one-record SQS batches (the deployed path)
into the trigger of the dev stack, each call counted by a botocore ``before-call`` hook on
every client the bridge's CloudClients makes (the bench's own clients are not counted).

Callbacks are dropped by the sandbox so the webhook, which shares the process and the
bridge's clients, makes no call while the trigger is counted. The goal is at most 3 calls per
upload."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
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


def measure(uploads: int = UPLOADS) -> list[Row]:
    counter = CallCounter()
    png = _png()
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
        first = Counter(counter.calls)
        counter.calls.clear()
        stack.sandbox.wait_idle(timeout=60)
        process_cpu = bridge_cpu = 0.0
        for event in events[1:]:
            counter.counting = True
            cpu_started, bridge_started = time.process_time(), bridge_cpu_seconds()
            answer = stack.invoke_trigger(event, LocalContext(timeout_seconds=60))
            process_cpu += time.process_time() - cpu_started
            bridge_cpu += bridge_cpu_seconds() - bridge_started
            counter.counting = False
            assert answer == {"batchItemFailures": []}, answer
            # the job runs in the in-process sandbox: let it end outside the measured window
            stack.sandbox.wait_idle(timeout=60)
        jobs = stack.sandbox.job_count()
    assert jobs == uploads + 1, f"{jobs} jobs for {uploads + 1} uploads"
    total = sum(counter.calls.values()) / uploads
    for name, count in sorted(counter.calls.items(), key=lambda item: -item[1]):
        say(f"  {count / uploads:5.2f} per upload  {name}")
    cold = ", ".join(f"{name} x{count}" for name, count in first.items()
                     if count > counter.calls[name] / uploads) or "nothing more"
    say(f"  {total:5.2f} per upload  total (goal <= {GOAL_CALLS}); the first event also made "
        f"{cold}")
    say(f"  CPU per event: {bridge_cpu / uploads * 1000:.1f} ms in the bridge's threads, "
        f"{process_cpu / uploads * 1000:.1f} ms of the whole process")
    rows = [Row("aws calls", f"per upload: {name}", count / uploads, "", None, "", "", None,
                f"{count} calls over {uploads} uploads")
            for name, count in sorted(counter.calls.items(), key=lambda item: -item[1])]
    rows.append(Row("aws calls", "AWS API calls per submitted upload (S3 trigger)", total, "",
                    None, "", f"<= {GOAL_CALLS}", total <= GOAL_CALLS,
                    f"{uploads} one-record SQS batches after a warm-up event; the first event "
                    f"also made {cold}"))
    rows.append(Row("aws calls", "bridge CPU per event (handler and record-worker threads)",
                    bridge_cpu / uploads * 1000, "ms", None, "", "< 2 ms",
                    bridge_cpu / uploads < 0.002,
                    f"time.process_time around the handler: {process_cpu / uploads * 1000:.1f} "
                    "ms, which also bills the in-process sandbox answering the job create"))
    return rows


if __name__ == "__main__":
    from bench.run import table

    print("\n".join(table(measure())))
