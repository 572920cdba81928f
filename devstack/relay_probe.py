"""Relay one download into S3, Azure Blob or GCS through convbridge's own relay code, in a
process of its own, and report bytes, time and the process's peak RSS as JSON. Used by the
large-relay test and the benchmarks: the figure that matters is the relaying process's memory,
which must not grow with the file.

    python -m devstack.relay_probe [--storage s3|azure|gcs] --url URL \\
        --endpoint http://127.0.0.1:PORT --bucket B --key K --size N [--baseline]

``--endpoint`` is the emulator's: moto's URL for S3, Azurite's account blob endpoint
(``http://host:port/devstoreaccount1``) for Azure, fake-gcs-server's base URL for GCS.
``--bucket`` is the bucket, or the container for Azure. ``--baseline`` sends the same stream
through the cloud's own SDK instead: boto3 ``upload_fileobj``, ``BlobClient.upload_blob(stream,
length=...)`` or ``Blob.upload_from_file(stream, size=...)``, the last in requests of
``--piece-bytes`` when given.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from convbridge.errors import StorageError
from convbridge.http import HostPattern
from convbridge.model import OutputFile, source_tag
from convbridge.pipeline import RELAY_CHUNK, RelayPolicy, relay_output
from convbridge.storage.base import Storage
from devstack.servers import RELAY_EXTRA_HOSTS


class _StreamFile(io.RawIOBase):
    """A read-only, forward-only file over an iterator of chunks, for the SDKs' stream uploads.
    ``tell`` counts the bytes read: google-resumable-media asks where the stream is."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""
        self._position = 0

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def readinto(self, target: Any) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        count = min(len(target), len(self._pending))
        target[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        self._position += count
        return count


#: what the probe writes through: the bridge's adapter, where it writes (its ``location``), and
#: the plain SDK upload of a stream of ``size`` bytes to the same object, for the baseline
Target = tuple[Storage, str, Callable[[_StreamFile, int], object]]


def _s3(args: argparse.Namespace) -> Target:
    import boto3

    from convbridge.storage.s3 import S3_CLIENT_CONFIG, S3Storage

    client = boto3.client("s3", endpoint_url=args.endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          config=S3_CLIENT_CONFIG)
    storage = S3Storage(s3_client=client, endpoint_url=args.endpoint)
    return storage, args.bucket, lambda stream, _size: client.upload_fileobj(
        stream, args.bucket, args.key)


def _azure(args: argparse.Namespace) -> Target:
    from azure.storage.blob import BlobServiceClient

    from convbridge.storage.azure_blob import AzureBlobStorage
    from devstack.servers_azure import ACCOUNT_KEY, ACCOUNT_NAME

    storage = AzureBlobStorage(account_name=ACCOUNT_NAME, account_key=lambda: ACCOUNT_KEY,
                               endpoint=args.endpoint, allow_http=True)
    service = BlobServiceClient(args.endpoint, credential={"account_name": ACCOUNT_NAME,
                                                           "account_key": ACCOUNT_KEY})
    blob = service.get_blob_client(args.bucket, args.key)
    # buffered: the SDK takes a short read for the end of the stream
    return storage, f"{ACCOUNT_NAME}/{args.bucket}", lambda stream, size: blob.upload_blob(
        io.BufferedReader(stream), length=size, overwrite=True)


def _gcs(args: argparse.Namespace) -> Target:
    from google.oauth2 import service_account

    from convbridge.storage.gcs import GcsStorage, storage_client
    from devstack.harness.gcs import service_account_key

    signer = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        service_account_key())
    storage = GcsStorage(client=storage_client(signer, args.endpoint), signer=signer)
    blob = storage_client(signer, args.endpoint).bucket(args.bucket).blob(args.key)
    if args.piece_bytes:
        # the resumable upload's request size: the bridge's own makes the same requests
        blob.chunk_size = args.piece_bytes
    return storage, args.bucket, lambda stream, size: blob.upload_from_file(
        io.BufferedReader(stream), size=size)


TARGETS: dict[str, Callable[[argparse.Namespace], Target]] = {
    "s3": _s3, "azure": _azure, "gcs": _gcs}


def peak_rss_kib() -> int:
    """This process's own high-water mark. Not getrusage's ru_maxrss: Linux carries that
    across exec, so a child started by a big parent would report the parent's peak."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", choices=sorted(TARGETS), default="s3")
    parser.add_argument("--url", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True, help="bucket, or container for Azure")
    parser.add_argument("--key", required=True)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--baseline", action="store_true",
                        help="the cloud SDK's own upload of the same stream, for comparison")
    parser.add_argument("--piece-bytes", type=int, default=None,
                        help="GCS baseline: bytes per resumable upload request (the SDK's "
                             "default is 100 MiB)")
    args = parser.parse_args(argv)
    storage, location, sdk_upload = TARGETS[args.storage](args)
    started = time.monotonic()
    report: dict[str, object] = {"storage": args.storage}
    with httpx.Client(timeout=60) as http:
        if args.baseline:
            with http.stream("GET", args.url) as response:
                sdk_upload(_StreamFile(response.iter_bytes(RELAY_CHUNK)), args.size)
            report.update(ok=True, bytes=args.size)
        else:
            try:
                written = relay_output(http, storage, location, args.key,
                                       OutputFile(filename=args.key, size=args.size,
                                                  url=args.url),
                                       marker="relay-probe",
                                       policy=RelayPolicy((HostPattern.parse(RELAY_EXTRA_HOSTS),),
                                                          max_bytes=args.size),
                                       source=source_tag(location, args.key))
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
