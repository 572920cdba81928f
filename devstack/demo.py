"""``make demo``: the whole flow offline on the embedded default (moto + the sandbox).

Uploads one good image and one corrupt file to a local S3 bucket, delivers the S3 events to
the real trigger handler, lets the sandbox convert and call the real webhook back, and prints
what happened. Exits 0 only if the good image became a PDF with a ``finished`` result record
and the corrupt file got a failure report carrying the provider's error code.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
from typing import Any

from devstack.harness import HARNESSES, load_harness
from devstack.stack import DevStack

GOOD_KEY = "inbox/photos/sunset beach.png"
BAD_KEY = "inbox/photos/broken.png"
# where the demo's rule (the harness's DEFAULT_RULES) records each file's outcome
GOOD_RECORD = "results/photos/sunset beach.png.json"
BAD_RECORD = "failures/photos/broken.png.json"


def sample_png() -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (320, 200), (250, 160, 60))
    draw = ImageDraw.Draw(image)
    draw.ellipse((110, 60, 210, 160), fill=(255, 230, 120))
    draw.rectangle((0, 150, 320, 200), fill=(40, 90, 160))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def say(message: str) -> None:
    print(message, flush=True)


def run(storage: str) -> int:
    if storage not in HARNESSES:
        say(f"storage {storage!r} is not available in the demo yet; try --storage s3")
        return 2
    started = time.monotonic()
    harness = load_harness(storage)()
    say(f"convbridge demo: {harness.title} -> CloudConvert v2 (local sandbox) -> results back")
    with DevStack(storage=harness) as stack:
        say(f"  moto server     {stack.moto.endpoint_url}  (Secrets Manager, DynamoDB, SQS)")
        say(f"  sandbox         {stack.sandbox.url}/v2")
        webhook = stack.webhook.url if stack.webhook else "?"
        say(f"  webhook         {webhook}/callbacks/cloudconvert")
        say(f"  storage         {harness.describe('')}")
        automatic = harness.watch(stack)
        stack.upload(GOOD_KEY, sample_png())
        stack.upload(BAD_KEY, b"\x89PNG\r\n\x1a\n this is not really an image")
        say(f"\nuploaded {GOOD_KEY!r} and {BAD_KEY!r}")
        if not automatic:
            for key in (GOOD_KEY, BAD_KEY):
                stack.trigger(stack.event_for(key))
        say(f"  {harness.delivery} -> CloudConvert jobs -> signed callbacks -> webhook"
            " -> completion queue -> records")
        stack.wait(timeout=60)
        records = [r for r in map(stack.read_json, (GOOD_RECORD, BAD_RECORD)) if r]
        for line in job_lines([job["id"] for job in stack.sandbox.jobs()], records):
            say(line)
        ok = report(stack)
    say(f"\ndemo {'succeeded' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s")
    return 0 if ok else 1


def job_lines(job_ids: list[str], records: list[dict[str, Any]]) -> list[str]:
    """One line per provider job: the source file it converted and the outcome its record
    states (the record, not the provider's job status, is what the bridge reports)."""
    by_job = {record["job_id"]: record for record in records}
    lines = []
    for job_id in job_ids:
        record = by_job.get(job_id)
        if record is None:
            lines.append(f"  job {job_id}: no record")
            continue
        outcome = record["status"]
        if outcome == "failed":
            outcome = f"failed ({(record.get('error') or {}).get('code', 'no code')})"
        lines.append(f"  job {job_id}  {record['source']['key']}: {outcome}")
    return lines


def report(stack: DevStack) -> bool:
    ok = True
    good = stack.read_json(GOOD_RECORD)
    say("\nconverted objects:")
    describe = stack.harness.describe
    for key, size in sorted(stack.objects("outbox/").items()):
        say(f"  {describe(key)}  {size} bytes")
    if not good or good.get("status") != "finished":
        say(f"  expected a finished result record for {GOOD_KEY}, got {good}")
        ok = False
    else:
        say(f"result record: {describe(GOOD_RECORD)}")
        say(f"  status {good['status']}, job {good['job_id']}, route {good['route']}, "
            f"outputs {[o['key'] for o in good['outputs']]}")
        pdf = stack.harness.read_bytes(good["outputs"][0]["key"]) or b""
        if not pdf.startswith(b"%PDF"):
            say("  the output is not a PDF")
            ok = False
    bad = stack.read_json(BAD_RECORD)
    if not bad or bad.get("status") != "failed" or not (bad.get("error") or {}).get("code"):
        say(f"  expected a failure report for {BAD_KEY}, got {bad}")
        ok = False
    else:
        error = bad["error"]
        say(f"failure report: {describe(BAD_RECORD)}")
        say(f"  job {bad['job_id']}: task {error['task']!r} failed with {error['code']}: "
            f"{error['message']}")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--storage", default="s3", choices=sorted(HARNESSES),
                        help="which storage to run the flow on (default: s3 on moto)")
    parser.add_argument("--verbose", action="store_true", help="show the bridge's own log lines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    # the handlers' structured logs are the deployed format; the demo prints its own summary
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "INFO" if args.verbose else "WARNING")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "false" if args.verbose else "true")
    return run(args.storage)


if __name__ == "__main__":
    sys.exit(main())
