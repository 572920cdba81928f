"""Submit throughput: an SQS batch into the S3 trigger while the provider sandbox adds 100 ms
to every API call, against a single-record submission in the same run (target: a 10-record
batch at most 2x one record). Also the bridge's own CPU per event with a zero-latency sandbox
(target under 2 ms): the trigger runs on the main thread and only that thread's CPU time is
counted, so moto and the sandbox (other threads) are not billed to the bridge."""

from __future__ import annotations

import hashlib
import io
import json
import time
from typing import Any

from bench.common import Row, say
from devstack.lambda_local import LocalContext
from devstack.sandbox import Faults
from devstack.stack import DevStack

LATENCY = 0.1


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _sqs_batch(stack: DevStack, keys: list[str]) -> dict[str, Any]:
    records = []
    for index, key in enumerate(keys):
        body = json.dumps(stack.s3_event(key))
        records.append({
            "messageId": f"m-{index}", "receiptHandle": f"r-{index}", "body": body,
            "attributes": {"ApproximateReceiveCount": "1"}, "messageAttributes": {},
            "md5OfBody": hashlib.md5(body.encode()).hexdigest(), "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:bench",
            "awsRegion": "us-east-1"})
    return {"Records": records}


def _batch_seconds(stack: DevStack, size: int, tag: str) -> float:
    keys = [f"inbox/{tag}/{n:04d}.png" for n in range(size)]
    png = _png()
    for key in keys:
        stack.upload(key, png)
    event = _sqs_batch(stack, keys)
    started = time.perf_counter()
    answer = stack.invoke_trigger(event, LocalContext(timeout_seconds=300))
    elapsed = time.perf_counter() - started
    assert answer == {"batchItemFailures": []}, answer
    return elapsed


def measure(batch_sizes: tuple[int, ...] = (1, 10, 100)) -> tuple[list[Row], dict[int, float]]:
    rows: list[Row] = []
    scaling: dict[int, float] = {}
    # callbacks held back so the webhook does not compete with the batch being measured
    faults = Faults(latency_seconds=LATENCY, callback_delay_seconds=5.0)
    with DevStack(faults=faults, moto_own_process=True) as stack:
        _batch_seconds(stack, 1, "warm")  # clients, secrets and claims table warmed up
        single = min(_batch_seconds(stack, 1, f"one-{n}") for n in range(3))
        for size in batch_sizes:
            scaling[size] = _batch_seconds(stack, size, f"batch-{size}")
            say(f"  batch of {size}: {scaling[size] * 1000:.0f} ms "
                f"({size / scaling[size]:.1f} events/s)")
        ten = scaling.get(10) or _batch_seconds(stack, 10, "ten")
        rows.append(Row("submit", "10-record SQS batch, sandbox +100 ms per call", ten * 1000,
                        "ms", single * 1000, "one-record batch", "<= 2x baseline",
                        ten <= 2 * single, f"{10 / ten:.1f} events/s per instance"))
        stack.wait(timeout=300)
    with DevStack(moto_own_process=True) as stack:
        png = _png()
        keys = [f"inbox/cpu/{n:04d}.png" for n in range(60)]
        for key in keys:
            stack.upload(key, png)
        stack.trigger(stack.s3_event(keys[0]))
        events = [stack.s3_event(key) for key in keys[1:]]
        cpu_started = time.thread_time()
        for event in events:
            stack.trigger(event)
        cpu = (time.thread_time() - cpu_started) / len(events)
        stack.wait(timeout=120)
    rows.append(Row("submit", "bridge CPU per event (zero-latency sandbox)", cpu * 1000, "ms",
                    None, "", "< 2 ms", cpu < 0.002,
                    "main-thread CPU of the trigger: parse, rules, claims, grants, job, records"))
    say(f"  bridge CPU per event: {cpu * 1000:.2f} ms")
    return rows, scaling


if __name__ == "__main__":
    found, _ = measure()
    for row in found:
        print(row)
