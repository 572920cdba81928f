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

from devstack.harness import HARNESSES, load_harness
from devstack.stack import DevStack

GOOD_KEY = "inbox/photos/sunset beach.png"
BAD_KEY = "inbox/photos/broken.png"


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
        for job in stack.sandbox.jobs():
            say(f"  job {job['id']}: {job['status']}")
        ok = report(stack)
    say(f"\ndemo {'succeeded' if ok else 'FAILED'} in {time.monotonic() - started:.1f} s")
    return 0 if ok else 1


def report(stack: DevStack) -> bool:
    ok = True
    good = stack.read_json("results/photos/sunset beach.png.json")
    say("\nconverted objects:")
    describe = stack.harness.describe
    for key, size in sorted(stack.objects("outbox/").items()):
        say(f"  {describe(key)}  {size} bytes")
    if not good or good.get("status") != "finished":
        say(f"  expected a finished result record for {GOOD_KEY}, got {good}")
        ok = False
    else:
        say(f"result record: {describe('results/photos/sunset beach.png.json')}")
        say(f"  status {good['status']}, job {good['job_id']}, route {good['route']}, "
            f"outputs {[o['key'] for o in good['outputs']]}")
        pdf = stack.harness.read_bytes(good["outputs"][0]["key"]) or b""
        if not pdf.startswith(b"%PDF"):
            say("  the output is not a PDF")
            ok = False
    bad = stack.read_json("failures/photos/broken.png.json")
    if not bad or bad.get("status") != "failed" or not (bad.get("error") or {}).get("code"):
        say(f"  expected a failure report for {BAD_KEY}, got {bad}")
        ok = False
    else:
        error = bad["error"]
        say(f"failure report: {describe('failures/photos/broken.png.json')}")
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
