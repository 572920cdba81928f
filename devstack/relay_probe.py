"""Relay one download into S3 through convbridge's own relay code, in a process of its own,
and report bytes, time and the process's peak RSS as JSON. Used by the large-relay test and
the benchmarks: the figure that matters is the relaying process's memory, which must not
grow with the file.

    python -m devstack.relay_probe --url URL --endpoint http://127.0.0.1:PORT \\
        --bucket B --key K --size N
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import time
from collections.abc import Iterator
from typing import Any

import boto3
import httpx

from convbridge.errors import StorageError
from convbridge.model import OutputFile
from convbridge.pipeline import relay_output
from convbridge.storage.s3 import S3_CLIENT_CONFIG, S3Storage


class _StreamFile(io.RawIOBase):
    """A read-only file over an iterator of chunks, for boto3's upload_fileobj."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: Any) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        count = min(len(target), len(self._pending))
        target[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def peak_rss_kib() -> int:
    """This process's own high-water mark. Not getrusage's ru_maxrss: Linux carries that
    across exec, so a child started by a big parent would report the parent's peak."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--baseline", action="store_true",
                        help="plain boto3 upload_fileobj of the same stream, for comparison")
    args = parser.parse_args(argv)
    client = boto3.client("s3", endpoint_url=args.endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          config=S3_CLIENT_CONFIG)
    storage = S3Storage(s3_client=client, endpoint_url=args.endpoint)
    started = time.monotonic()
    report: dict[str, object] = {}
    with httpx.Client(timeout=60) as http:
        if args.baseline:
            with http.stream("GET", args.url) as response:
                client.upload_fileobj(_StreamFile(response.iter_bytes(64 * 1024)), args.bucket,
                                      args.key)
            report.update(ok=True, bytes=args.size)
        else:
            try:
                written = relay_output(http, storage, args.bucket, args.key,
                                       OutputFile(filename=args.key, size=args.size,
                                                  url=args.url),
                                       marker="relay-probe")
                report.update(ok=True, bytes=written)
            except StorageError as exc:
                report.update(ok=False, error=str(exc))
    seconds = time.monotonic() - started
    report.update(seconds=round(seconds, 3), peak_rss_mb=round(peak_rss_kib() / 1024, 1),
                  mib_per_second=round(args.size / 1024 / 1024 / seconds, 1) if seconds else None)
    print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
