"""A burst of uploads at once against a provider that caps concurrent jobs (5) and requests
per second (10), through the deployed path: S3 notifications into SQS (moto: visibility,
receive counts, redrive to a dead-letter queue after 5 receives), polled into the S3 trigger by
K concurrent local event source mappings, the bridge's own budget set to the provider's
limits. Reported: how many uploads end in a finished result record, messages in the DLQ,
duplicate jobs, the time to drain, and that time against the theoretical limit the caps allow
(the larger of uploads / concurrency x job time and uploads x requests per upload / rate).
The baseline, from the same run, is the same burst against an uncapped sandbox.

The K pollers share one process, hence one bridge and one budget: they stand for K handlers of
one execution environment holding the whole account's budget (CONVBRIDGE_TRIGGER_CONCURRENCY
unset). K Lambda environments would each take a K-th of it (the template sets the variable to
the event source's MaximumConcurrency): the same account-wide limits, split.

    PYTHONPATH=shared:. python -m bench.burst [--quick] [--uploads N] [--handlers K]"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import boto3

from bench.common import Row, say
from devstack.lambda_local import SqsPoller, load_function
from devstack.sandbox import Faults
from devstack.stack import DevStack

MAX_CONCURRENT_JOBS = 5
REQUESTS_PER_SECOND = 10
MAX_RECEIVE_COUNT = 5
HANDLERS = 10
#: the webhook's handlers on the completion queue: the template's CompletionMaxConcurrency
COMPLETION_HANDLERS = 5
UPLOADS = 2000
QUICK_UPLOADS = 200
#: the burst's job creations: CloudConvert v2, the default rules' provider
JOB_CREATE = ("POST", "/v2/jobs")
REFUSED = (402, 429)


@dataclass(frozen=True)
class Burst:
    """What one burst did."""

    uploads: int
    finished: int
    failure_reports: int
    dlq_messages: int
    jobs: int
    distinct_job_ids: int
    drain_seconds: float
    mean_job_seconds: float
    #: provider API requests per upload that were answered (not refused), from the sandbox log
    accepted_requests_per_upload: float
    refused_creates: int
    drained: bool

    @property
    def duplicate_jobs(self) -> int:
        """Jobs beyond one per upload."""
        return max(0, self.jobs - self.uploads)


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _with_dlq(stack: DevStack) -> str:
    sqs = boto3.client("sqs", region_name="us-east-1")
    dlq_url: str = sqs.create_queue(QueueName="convbridge-s3-events-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    events_url = stack.harness.events_queue_url  # type: ignore[attr-defined]
    sqs.set_queue_attributes(QueueUrl=events_url, Attributes={"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVE_COUNT)})})
    return dlq_url


def _dlq_messages(dlq_url: str) -> int:
    sqs = boto3.client("sqs", region_name="us-east-1")
    found = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]
    return sum(int(found[name]) for name in ("ApproximateNumberOfMessages",
                                             "ApproximateNumberOfMessagesNotVisible",
                                             "ApproximateNumberOfMessagesDelayed"))


@contextmanager
def _workers_per_handler(handlers: int) -> Iterator[None]:
    """Each Lambda environment has its own record workers; the bench's handlers share one
    process, hence one pool, and with 16 workers for all of them the trigger's records waiting
    on the provider's budget starved the webhook's settles (a 2,000-upload burst settled 2.6
    jobs per second). So the pool gets 16 workers per handler while the burst runs."""
    from convbridge import runtime

    before = runtime.RECORD_WORKERS
    runtime._record_workers.cache_clear()
    runtime.RECORD_WORKERS = before * handlers
    try:
        yield
    finally:
        runtime._record_workers().shutdown(wait=False)
        runtime._record_workers.cache_clear()
        runtime.RECORD_WORKERS = before


def _add_handlers(stack: DevStack, count: int) -> None:
    """Handlers beyond the one watch_bucket starts, on the same queue."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = stack.harness.events_queue_url  # type: ignore[attr-defined]
    for _ in range(count):
        stack.pollers.append(SqsPoller(sqs, url, stack.trigger_module.handler).start())


def _add_completion_handlers(stack: DevStack, count: int) -> None:
    """Webhook handlers beyond the one the stack starts on the completion queue, as many as
    the template's CompletionMaxConcurrency runs: with one, settling 2,000 callbacks in
    batches of 5 trailed the last job by many seconds."""
    sqs = boto3.client("sqs", region_name="us-east-1")
    url = os.environ["CONVBRIDGE_COMPLETION_QUEUE_URL"]
    webhook = load_function("webhook")
    for _ in range(count):
        stack.pollers.append(SqsPoller(sqs, url, webhook.handler, batch_size=5).start())


class _Finished:
    """Result records seen finished. Watching must not slow the burst it measures: the
    records are read only once the sandbox has run as many jobs as there are uploads, and then
    only those not yet seen finished, with one S3 client (building one per read, or listing
    and reading every record twice a second, made moto the bottleneck at 2,000 uploads)."""

    def __init__(self, stack: DevStack) -> None:
        self._stack = stack
        self._s3 = boto3.session.Session().client("s3", region_name="us-east-1",
                                                  endpoint_url=stack.moto.endpoint_url)
        self.records: dict[str, dict[str, Any]] = {}
        self._unread: set[str] = set()

    def look(self) -> int:
        if not self._unread:
            self._unread = set(self._keys("results/")) - set(self.records)
        for key in sorted(self._unread):
            body = self._s3.get_object(Bucket=self._stack.bucket, Key=key)["Body"].read()
            record = json.loads(body)
            if record.get("status") == "finished":
                self.records[key] = record
                self._unread.discard(key)
        return len(self.records)

    def _keys(self, prefix: str) -> list[str]:
        pages = self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._stack.bucket,
                                                                   Prefix=prefix)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def last_recorded(self) -> float:
        """When the last finished record was written (epoch seconds, to the second)."""
        return max(_seconds(str(r["recorded_at"])) for r in self.records.values())


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def run_burst(uploads: int, *, capped: bool, handlers: int = HANDLERS,
              timeout: float = 1800) -> Burst:
    faults = (Faults(max_concurrent_jobs=MAX_CONCURRENT_JOBS,
                     max_requests_per_second=REQUESTS_PER_SECOND, retry_after_seconds=1)
              if capped else Faults())
    env = {"CONVBRIDGE_BACKPRESSURE_BASE_SECONDS": "1", "CONVBRIDGE_BACKPRESSURE_MAX_SECONDS": "3"}
    if capped:
        env |= {"CONVBRIDGE_CLOUDCONVERT_MAX_CONCURRENT_JOBS": str(MAX_CONCURRENT_JOBS),
                "CONVBRIDGE_CLOUDCONVERT_REQUESTS_PER_SECOND": str(REQUESTS_PER_SECOND)}
    png = _png()
    with _workers_per_handler(handlers + COMPLETION_HANDLERS), DevStack(
            faults=faults, env=env, moto_own_process=True) as stack:
        dlq_url = _with_dlq(stack)
        stack.watch_bucket()
        _add_handlers(stack, handlers - 1)
        _add_completion_handlers(stack, COMPLETION_HANDLERS - 1)
        s3 = boto3.session.Session().client("s3", region_name="us-east-1",
                                            endpoint_url=stack.moto.endpoint_url)
        keys = [f"inbox/burst/{n:05d}.png" for n in range(uploads)]
        finished = _Finished(stack)
        started_wall, started = time.time(), time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda key: s3.put_object(Bucket=stack.bucket, Key=key, Body=png),
                          keys))
        deadline = started + timeout
        # the sandbox counts its jobs in memory: no request until every upload has one
        while stack.sandbox.job_count() < uploads and time.monotonic() < deadline:
            time.sleep(1.0)
        while finished.look() < uploads and time.monotonic() < deadline:
            time.sleep(1.0)
        drained = len(finished.records) == uploads
        # the records' own time, so the one-second looks above add nothing to the figure
        drain = (finished.last_recorded() - started_wall if drained
                 else time.monotonic() - started)
        if drained:  # the last callbacks settle (stack.wait would poll K idle pollers)
            stack.sandbox.wait_idle(timeout=60)
        jobs = stack.sandbox.jobs()
        durations = [_seconds(j["ended_at"]) - _seconds(j["created_at"])
                     for j in jobs if j.get("ended_at")]
        requests = stack.sandbox.requests()
        accepted = [r for r in requests if r["status"] not in REFUSED]
        creates = [r for r in requests if (r["method"], r["path"]) == JOB_CREATE]
        return Burst(
            uploads=uploads, finished=len(finished.records),
            failure_reports=len(stack.objects("failures/")), dlq_messages=_dlq_messages(dlq_url),
            jobs=stack.sandbox.job_count(),
            distinct_job_ids=len({r.get("job_id") for r in finished.records.values()}),
            drain_seconds=drain,
            # second-resolution timestamps: the mean over many jobs is still unbiased
            mean_job_seconds=statistics.fmean(durations) if durations else 0.0,
            accepted_requests_per_upload=len(accepted) / uploads,
            refused_creates=sum(1 for r in creates if r["status"] in REFUSED),
            drained=drained)


def theoretical_seconds(burst: Burst) -> tuple[float, str]:
    """The fastest a burst can drain under the caps, and which cap binds."""
    by_jobs = burst.uploads / MAX_CONCURRENT_JOBS * burst.mean_job_seconds
    by_rate = burst.uploads * burst.accepted_requests_per_upload / REQUESTS_PER_SECOND
    if by_rate >= by_jobs:
        return by_rate, (f"rate: {burst.uploads} x {burst.accepted_requests_per_upload:.2f} "
                         f"requests / {REQUESTS_PER_SECOND}/s; jobs: {burst.uploads} / "
                         f"{MAX_CONCURRENT_JOBS} x {burst.mean_job_seconds:.2f} s = "
                         f"{by_jobs:.1f} s")
    return by_jobs, (f"jobs: {burst.uploads} / {MAX_CONCURRENT_JOBS} x "
                     f"{burst.mean_job_seconds:.2f} s; rate bound {by_rate:.1f} s")


def _describe(label: str, burst: Burst) -> None:
    say(f"  {label}: {burst.finished}/{burst.uploads} finished in {burst.drain_seconds:.1f} s, "
        f"{burst.failure_reports} failure reports, DLQ {burst.dlq_messages}, jobs {burst.jobs} "
        f"({burst.duplicate_jobs} duplicate), refused creates {burst.refused_creates}, "
        f"mean job {burst.mean_job_seconds:.2f} s, "
        f"{burst.accepted_requests_per_upload:.2f} accepted requests per upload")


def measure(uploads: int = UPLOADS, handlers: int = HANDLERS) -> tuple[list[Row], dict[int, Any]]:
    capped = run_burst(uploads, capped=True, handlers=handlers)
    _describe("capped (5 jobs, 10 req/s)", capped)
    uncapped = run_burst(uploads, capped=False, handlers=handlers)
    _describe("uncapped", uncapped)
    limit, bound = theoretical_seconds(capped)
    area, size = "burst", f"{uploads:,} uploads, {handlers} handlers"
    rows = [
        Row(area, f"{size}: finished result records", capped.finished, "", None, "",
            f"{uploads:,}", capped.finished == uploads,
            f"{capped.failure_reports} failure reports"),
        Row(area, f"{size}: DLQ messages", capped.dlq_messages, "", None, "", "0",
            capped.dlq_messages == 0, f"maxReceiveCount {MAX_RECEIVE_COUNT}"),
        Row(area, f"{size}: duplicate jobs", capped.duplicate_jobs, "", None, "", "0",
            capped.duplicate_jobs == 0,
            f"{capped.jobs} jobs; {capped.refused_creates} creates refused 402/429"),
        Row(area, f"{size}: time to drain, capped sandbox", capped.drain_seconds, "s",
            uncapped.drain_seconds, "same burst, uncapped sandbox", "report", None,
            "from the first upload to the last finished record" if capped.drained
            else "**did not drain before the timeout**"),
        Row(area, f"{size}: time to drain against the caps' limit", capped.drain_seconds, "s",
            limit, "theoretical limit", "report", None, bound),
    ]
    scaling = {uploads: {"capped_drain_s": capped.drain_seconds,
                         "uncapped_drain_s": uncapped.drain_seconds,
                         "theoretical_s": limit}}
    return rows, scaling


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_UPLOADS} uploads")
    parser.add_argument("--uploads", type=int, default=None)
    parser.add_argument("--handlers", type=int, default=HANDLERS)
    args = parser.parse_args()
    count = args.uploads or (QUICK_UPLOADS if args.quick else UPLOADS)
    from bench.run import table

    print("\n".join(table(measure(count, args.handlers)[0])))
