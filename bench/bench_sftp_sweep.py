"""SFTP sweep at scale: 10,000 files in one drop (``--files`` to change), swept once through the
real sweep handler against the local SFTP server (OpenSSH when root), with moto and the provider
sandbox each in a process of their own (the sandbox holding its callbacks back), so this
process runs the sweep and little else: listing, settling, claiming and submitting (DynamoDB
claim, records, job, upload of each file) are what is timed. Reports the first sweep (within
one 15-minute Lambda invocation), an empty re-sweep (the drop is empty, the claims sit in
``processing/``), and memory: this process's peak RSS growth over the first sweep, and the
Python heap peak of the re-sweep. A benchmark, not a test; ``make test`` does not run it."""

from __future__ import annotations

import argparse
import io
import os
import resource
import secrets
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from devstack.harness.sftp import SftpHarness
from devstack.lambda_local import LocalContext
from devstack.sandbox import Faults
from devstack.servers import free_ports
from devstack.stack import DevStack

LAMBDA_SECONDS = 900.0


def say(message: str) -> None:
    print(message, flush=True)


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _fill(harness: SftpHarness, count: int) -> None:
    """Files straight onto the server's disk (an SFTP upload each would take longer than the
    sweep), owned by the account as if it had uploaded them, 100 to a folder."""
    drop = harness.server.drop_path
    assert drop is not None
    owner = drop.stat()
    png = _png()
    for number in range(count):
        folder = drop / "inbox" / f"batch-{number // 100:03d}"
        if not folder.exists():
            folder.mkdir(parents=True)
            for made in (folder, folder.parent):
                os.chown(made, owner.st_uid, owner.st_gid)
        path = folder / f"photo {number:05d}.png"
        path.write_bytes(png)
        os.chown(path, owner.st_uid, owner.st_gid)


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


def measure(count: int) -> dict[str, float]:
    harness = SftpHarness(settle_seconds=1.0)
    api_key, signing_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
    provider, url = _sandbox_process(api_key, signing_secret)
    stack = DevStack(storage=harness, moto_own_process=True,
                     env={"CONVBRIDGE_CLOUDCONVERT_URL": url},
                     faults=Faults(callback_delay_seconds=3600.0))
    # the bridge is given the keys of the sandbox it talks to (the in-process one idles)
    stack.api_key, stack.signing_secret = api_key, signing_secret
    try:
        return _sweeps(stack, harness, count)
    finally:
        provider.kill()
        provider.wait()


def _sweeps(stack: DevStack, harness: SftpHarness, count: int) -> dict[str, float]:
    with stack:
        say(f"SFTP sweep bench: {count} files, server {harness.server.backend} "
            f"on {harness.location}")
        started = time.perf_counter()
        _fill(harness, count)
        say(f"  drop filled in {time.perf_counter() - started:.1f} s")
        rss_before = _peak_rss_mb()
        started = time.perf_counter()
        first = stack.invoke_trigger(stack.event_for(""),
                                     LocalContext(timeout_seconds=LAMBDA_SECONDS))
        first_seconds = time.perf_counter() - started
        rss_growth = _peak_rss_mb() - rss_before
        submitted = first["counts"].get("submitted", 0)
        say(f"  first sweep: {first_seconds:.1f} s for {submitted} submitted "
            f"({submitted / first_seconds:.0f} files/s, 1 s of it settling); counts "
            f"{first['counts']}, deferred {first['deferred']}, waiting {first['waiting']}")
        say(f"  peak RSS growth over the first sweep: {rss_growth:.0f} MB "
            f"(process peak {_peak_rss_mb():.0f} MB)")
        started = time.perf_counter()
        again = stack.invoke_trigger(stack.event_for(""), LocalContext())
        again_seconds = time.perf_counter() - started
        tracemalloc.start()
        stack.invoke_trigger(stack.event_for(""), LocalContext())
        _, heap_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        say(f"  empty re-sweep: {again_seconds * 1000:.0f} ms (counts {again['counts']}; "
            f"{count} claims listed in processing/), Python heap peak "
            f"{heap_peak / 1024 / 1024:.1f} MB (measured in a second, traced re-sweep)")
        return {"files": count, "first_sweep_seconds": first_seconds, "submitted": submitted,
                "files_per_second": submitted / first_seconds,
                "rss_growth_mb": rss_growth, "resweep_seconds": again_seconds,
                "resweep_heap_peak_mb": heap_peak / 1024 / 1024}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=10_000)
    args = parser.parse_args(argv)
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    figures = measure(args.files)
    say("  " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                         for k, v in figures.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
