"""Relay throughput and memory: a provider-sized output streamed from a local HTTP server into
storage by the bridge's own relay code, each run in a fresh process (so its peak RSS is its
own), against a plain boto3 ``upload_fileobj`` of the same stream in the same run. Targets:
throughput at least 0.9x the baseline, peak RSS under 200 MB."""

from __future__ import annotations

import json
import subprocess
import sys

import boto3

from bench.common import ROOT, Row, say
from convbridge.storage.s3 import S3_CLIENT_CONFIG
from devstack.bulk_http import PatternServer
from devstack.servers import MotoServer

GIB = 1024 ** 3
BUCKET = "bench-relay"


def _probe(source: PatternServer, endpoint: str, size: int, *, baseline: bool) -> dict[str, float]:
    command = [sys.executable, "-m", "devstack.relay_probe", "--url", source.url(size),
               "--endpoint", endpoint, "--bucket", BUCKET, "--key", f"relay-{size}",
               "--size", str(size)]
    if baseline:
        command.append("--baseline")
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"relay probe failed: {done.stdout}{done.stderr[-1000:]}")
    report: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def measure(sizes: tuple[int, ...] = (1024 * 1024, 100 * 1024 * 1024, GIB)
            ) -> tuple[list[Row], dict[int, dict[str, float]]]:
    rows: list[Row] = []
    scaling: dict[int, dict[str, float]] = {}
    with MotoServer(own_process=True) as moto, PatternServer() as source:
        s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench",
                          config=S3_CLIENT_CONFIG)
        s3.create_bucket(Bucket=BUCKET)
        for size in sizes:
            base = _probe(source, moto.endpoint_url, size, baseline=True)
            s3.delete_object(Bucket=BUCKET, Key=f"relay-{size}")
            ours = _probe(source, moto.endpoint_url, size, baseline=False)
            s3.delete_object(Bucket=BUCKET, Key=f"relay-{size}")
            scaling[size] = {"relay_mib_s": ours["mib_per_second"],
                             "baseline_mib_s": base["mib_per_second"],
                             "relay_rss_mb": ours["peak_rss_mb"],
                             "baseline_rss_mb": base["peak_rss_mb"]}
            say(f"  relay {size >> 20} MiB into moto S3: {ours['mib_per_second']} MiB/s, "
                f"{ours['peak_rss_mb']} MB peak (upload_fileobj {base['mib_per_second']} MiB/s, "
                f"{base['peak_rss_mb']} MB)")
        big = scaling[max(sizes)]
        label = f"{max(sizes) >> 20} MiB"
        rows.append(Row("relay", f"{label} relay into S3 (moto): throughput",
                        big["relay_mib_s"], "MiB/s", big["baseline_mib_s"],
                        "boto3 upload_fileobj of the same stream", ">= 0.9x baseline",
                        big["relay_mib_s"] >= 0.9 * big["baseline_mib_s"]))
        rows.append(Row("relay", f"{label} relay into S3 (moto): peak RSS",
                        big["relay_rss_mb"], "MB", big["baseline_rss_mb"],
                        "boto3 upload_fileobj of the same stream", "< 200 MB",
                        big["relay_rss_mb"] < 200))
    return rows, scaling


if __name__ == "__main__":
    found, _ = measure()
    for row in found:
        print(row)
