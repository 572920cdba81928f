"""Relay throughput and memory: a provider-sized output streamed from a local HTTP server into
each storage (S3 on moto, Azure Blob on Azurite, GCS on fake-gcs-server) by the bridge's own
relay code, each run in a fresh process (so its peak RSS is its own), against the cloud SDK's
plain upload of the same stream in the same run (boto3 ``upload_fileobj``, Azure
``BlobClient.upload_blob(stream, length=...)``, GCS ``Blob.upload_from_file(stream,
size=...)``). Targets: throughput at least 0.9x the baseline, peak RSS under 200 MB.

The GCS baseline sends its resumable upload in the bridge's piece size
(``convbridge.storage.gcs.UPLOAD_CHUNK``), so both make the same number of requests:
fake-gcs-server's cost per piece grows with the bytes it already holds, and the SDK's default
100 MiB chunks made a sixth of the bridge's requests, which compared request counts, not code.

    python -m bench.relay [--storage gcs] [--sizes-mib 1 100 1024]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import boto3

from bench.common import ROOT, Row, say
from convbridge.storage.gcs import UPLOAD_CHUNK
from convbridge.storage.s3 import S3_CLIENT_CONFIG
from devstack.bulk_http import PatternServer
from devstack.servers import MotoServer
from devstack.servers_azure import AzuriteServer
from devstack.servers_gcs import FakeGcsServer

GIB = 1024 ** 3
BUCKET = "bench-relay"

#: storage -> (title, baseline label)
STORAGES = {
    "s3": ("S3 (moto)", "boto3 upload_fileobj of the same stream"),
    "azure": ("Azure Blob (Azurite)", "BlobClient.upload_blob(stream, length=) of the same stream"),
    "gcs": ("GCS (fake-gcs-server)",
            f"Blob.upload_from_file(stream, size=) of the same stream, in "
            f"{UPLOAD_CHUNK >> 20} MiB requests like the relay"),
}
#: the baseline's request size where the SDK's default would make fewer requests than ours
BASELINE_PIECE_BYTES = {"gcs": UPLOAD_CHUNK}


def _probe(storage: str, source: PatternServer, endpoint: str, size: int, *,
           baseline: bool) -> dict[str, float]:
    command = [sys.executable, "-m", "devstack.relay_probe", "--storage", storage,
               "--url", source.url(size), "--endpoint", endpoint, "--bucket", BUCKET,
               "--key", f"relay-{size}", "--size", str(size)]
    if baseline:
        command.append("--baseline")
        if storage in BASELINE_PIECE_BYTES:
            command += ["--piece-bytes", str(BASELINE_PIECE_BYTES[storage])]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{storage} relay probe failed: {done.stdout}{done.stderr[-1000:]}")
    report: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@contextmanager
def _s3() -> Iterator[tuple[str, Callable[[str], Any]]]:
    with MotoServer(own_process=True) as moto:
        s3 = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench",
                          config=S3_CLIENT_CONFIG)
        s3.create_bucket(Bucket=BUCKET)
        yield moto.endpoint_url, lambda key: s3.delete_object(Bucket=BUCKET, Key=key)


@contextmanager
def _azure() -> Iterator[tuple[str, Callable[[str], Any]]]:
    from azure.storage.blob import BlobServiceClient

    server = AzuriteServer()
    server.start()
    try:
        container = BlobServiceClient(server.endpoint_url, credential={
            "account_name": server.account_name, "account_key": server.account_key,
        }).create_container(BUCKET)
        yield server.endpoint_url, lambda key: container.delete_blob(key)
    finally:
        server.stop()


@contextmanager
def _gcs() -> Iterator[tuple[str, Callable[[str], Any]]]:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    server = FakeGcsServer()
    server.start()
    try:
        client = storage.Client(project="convbridge-local", credentials=AnonymousCredentials(),
                                client_options={"api_endpoint": server.endpoint_url})
        bucket = client.create_bucket(BUCKET)
        yield server.endpoint_url, lambda key: bucket.delete_blob(key)
    finally:
        server.stop()


SERVERS = {"s3": _s3, "azure": _azure, "gcs": _gcs}


def measure(sizes: tuple[int, ...] = (1024 * 1024, 100 * 1024 * 1024, GIB),
            storages: tuple[str, ...] = tuple(STORAGES),
            ) -> tuple[list[Row], dict[int, dict[str, float]]]:
    rows: list[Row] = []
    scaling: dict[int, dict[str, float]] = {size: {} for size in sizes}
    label = f"{max(sizes) >> 20} MiB"
    with PatternServer() as source:
        for storage in storages:
            title, baseline_label = STORAGES[storage]
            with SERVERS[storage]() as (endpoint, delete):
                for size in sizes:
                    key = f"relay-{size}"
                    base = _probe(storage, source, endpoint, size, baseline=True)
                    delete(key)
                    ours = _probe(storage, source, endpoint, size, baseline=False)
                    delete(key)
                    # S3 keeps the unprefixed names the earlier reports used
                    prefix = "" if storage == "s3" else f"{storage}_"
                    scaling[size].update({
                        f"{prefix}relay_mib_s": ours["mib_per_second"],
                        f"{prefix}baseline_mib_s": base["mib_per_second"],
                        f"{prefix}relay_rss_mb": ours["peak_rss_mb"],
                        f"{prefix}baseline_rss_mb": base["peak_rss_mb"]})
                    say(f"  relay {size >> 20} MiB into {title}: {ours['mib_per_second']} MiB/s, "
                        f"{ours['peak_rss_mb']} MB peak (baseline {base['mib_per_second']} "
                        f"MiB/s, {base['peak_rss_mb']} MB)")
            prefix = "" if storage == "s3" else f"{storage}_"
            big = scaling[max(sizes)]
            speed, base_speed = big[f"{prefix}relay_mib_s"], big[f"{prefix}baseline_mib_s"]
            rss, base_rss = big[f"{prefix}relay_rss_mb"], big[f"{prefix}baseline_rss_mb"]
            rows.append(Row("relay", f"{label} relay into {title}: throughput", speed, "MiB/s",
                            base_speed, baseline_label, ">= 0.9x baseline",
                            speed >= 0.9 * base_speed))
            rows.append(Row("relay", f"{label} relay into {title}: peak RSS", rss, "MB",
                            base_rss, baseline_label, "< 200 MB", rss < 200))
    return rows, scaling


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", choices=sorted(STORAGES), action="append",
                        help="only this storage (repeatable); all three by default")
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[1, 100, 1024],
                        help="relay sizes in MiB; the rows report the largest")
    args = parser.parse_args()
    from bench.run import table

    found, scaled = measure(tuple(size << 20 for size in args.sizes_mib),
                            tuple(args.storage or STORAGES))
    print("\n".join(table(found)))
    for size, figures in scaled.items():
        print(f"{size:,}: " + ", ".join(f"{name} {value}" for name, value in figures.items()))
