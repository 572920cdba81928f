"""The relay streams: a 1 GiB output goes from a provider URL into moto S3 through
``relay_output`` in its own process, whose peak RSS stays under 200 MB; a dropped download
leaves nothing under the final key."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import boto3
import httpx
import pytest

from convbridge.errors import StorageError
from convbridge.http import HostPattern
from convbridge.model import OutputFile, source_tag
from convbridge.pipeline import RelayPolicy, relay_output
from convbridge.rules import DEFAULT_MAX_OUTPUT
from convbridge.storage.s3 import S3_CLIENT_CONFIG, S3Storage
from devstack.bulk_http import PatternServer, expected_digest
from devstack.servers import RELAY_EXTRA_HOSTS, MotoServer

GIB = 1024 ** 3
BUCKET = "relay-large"
LOOPBACK = RelayPolicy((HostPattern.parse(RELAY_EXTRA_HOSTS),), max_bytes=DEFAULT_MAX_OUTPUT)


@pytest.fixture
def s3(moto: MotoServer):  # type: ignore[no-untyped-def]
    client = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          config=S3_CLIENT_CONFIG)
    client.create_bucket(Bucket=BUCKET)
    return client


def test_one_gib_relay_is_exact_and_memory_stays_flat(moto: MotoServer, s3) -> None:  # type: ignore[no-untyped-def]
    with PatternServer() as source:
        done = subprocess.run(
            [sys.executable, "-m", "devstack.relay_probe", "--url", source.url(GIB),
             "--endpoint", moto.endpoint_url, "--bucket", BUCKET, "--key", "outbox/big.bin",
             "--size", str(GIB)],
            capture_output=True, text=True, timeout=600,
        )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n1 GiB relay into moto: {report['seconds']} s, {report['mib_per_second']} MiB/s, "
          f"peak RSS {report['peak_rss_mb']} MB")
    assert report["bytes"] == GIB
    assert report["peak_rss_mb"] < 200
    head = s3.head_object(Bucket=BUCKET, Key="outbox/big.bin")
    assert head["ContentLength"] == GIB
    assert head["Metadata"]["convbridge-output"] == "relay-probe"
    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=BUCKET, Key="outbox/big.bin")["Body"].iter_chunks(
            8 * 1024 * 1024):
        digest.update(chunk)
    assert digest.hexdigest() == expected_digest(GIB)
    s3.delete_object(Bucket=BUCKET, Key="outbox/big.bin")


@pytest.mark.parametrize("size", [3 * 1024 * 1024, 40 * 1024 * 1024])
def test_a_dropped_download_leaves_no_object_and_no_upload(s3, size: int) -> None:  # type: ignore[no-untyped-def]
    storage = S3Storage(s3_client=s3)
    with PatternServer(drop_after=size // 2) as source, httpx.Client(timeout=30) as http:
        with pytest.raises(StorageError, match="relay of out.bin failed"):
            relay_output(http, storage, BUCKET, "outbox/partial.bin",
                         OutputFile(filename="out.bin", size=size, url=source.url(size)),
                         marker="rule", policy=LOOPBACK, source=source_tag(BUCKET, "inbox/big.bin"))
        assert source.requests == 3  # started again twice before giving up
    assert storage.stat(BUCKET, "outbox/partial.bin") is None
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_a_short_answer_with_an_honest_length_is_refused(s3) -> None:  # type: ignore[no-untyped-def]
    storage = S3Storage(s3_client=s3)
    with (PatternServer() as source, httpx.Client(timeout=30) as http,
          pytest.raises(StorageError, match="expected 2000")):
        relay_output(http, storage, BUCKET, "outbox/short.bin",
                     OutputFile(filename="short.bin", size=2000, url=source.url(1000)),
                     marker="rule", policy=LOOPBACK, source=source_tag(BUCKET, "inbox/big.bin"))
    assert storage.stat(BUCKET, "outbox/short.bin") is None
