"""S3Storage byte moving against a local moto server: small puts and large multipart writes of
odd-sized chunks round-trip through read_stream and stat, a writer whose source fails midway
leaves neither an object nor a pending multipart upload behind, write_json stores records with
the loop-guard marker, and an output write (carrying the source tag) is create-only but for the
same source's earlier output, with If-None-Match doing the refusing. moto does not enforce
grants, so nothing here is about scoping (see test_s3_grants_seaweedfs.py); a moto server that
cannot start fails these tests, never skips them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from typing import Any

import boto3
import pytest

from convbridge.errors import OutputCollision, StaleWrite
from convbridge.model import OUTPUT_MARKER, SOURCE_TAG, source_tag
from convbridge.storage.s3 import PART_SIZE, READ_CHUNK, S3_CLIENT_CONFIG, S3Storage
from devstack.servers import MotoServer, ServerStartError
from tests.conditional_writes import check_conditional_record_writes

BUCKET = "convbridge-moto"


@pytest.fixture(scope="module")
def moto_server() -> Iterator[MotoServer]:
    server = MotoServer()
    try:
        server.start()
    except ServerStartError as exc:
        pytest.fail(f"moto server could not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3(moto_server: MotoServer) -> Any:
    # moto state is process-global: start every test from an empty server.
    moto_server.reset()
    client = boto3.client(
        "s3",
        endpoint_url=moto_server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=S3_CLIENT_CONFIG,
    )
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def storage(s3: Any, moto_server: MotoServer) -> S3Storage:
    return S3Storage(s3_client=s3, region="us-east-1", endpoint_url=moto_server.endpoint_url)


def chunked(data: bytes, sizes: Iterable[int]) -> Iterator[bytes]:
    """``data`` cut into pieces of the given sizes, cycling through them."""
    sizes = list(sizes)
    offset = 0
    index = 0
    while offset < len(data):
        size = sizes[index % len(sizes)]
        yield data[offset : offset + size]
        offset += size
        index += 1


def failing_after(data: bytes, chunk_size: int, fail_at: int) -> Iterator[bytes]:
    """Yield ``data`` in chunks, then raise once ``fail_at`` bytes have gone out (a provider
    download dying mid-stream)."""
    sent = 0
    for chunk in chunked(data, [chunk_size]):
        if sent >= fail_at:
            raise ConnectionError("source stream broke")
        yield chunk
        sent += len(chunk)
    raise AssertionError("fail_at is past the end of data")


def assert_nothing_left(s3: Any, key: str) -> None:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=key)
    assert listing.get("KeyCount", 0) == 0, f"an object was left under {key}: {listing}"
    uploads = s3.list_multipart_uploads(Bucket=BUCKET)
    assert not uploads.get("Uploads"), f"a multipart upload was left pending: {uploads['Uploads']}"


def test_small_write_round_trip(storage: S3Storage, s3: Any) -> None:
    written = storage.write_stream(
        BUCKET,
        "outbox/small.txt",
        [b"hello ", b"", b"world"],
        content_type="text/plain",
        metadata={OUTPUT_MARKER: "job-1"},
    )

    assert written == 11
    assert storage.read_bytes(BUCKET, "outbox/small.txt") == b"hello world"
    ref = storage.stat(BUCKET, "outbox/small.txt")
    assert ref is not None
    assert ref.size == 11
    assert ref.version
    assert ref.metadata.get(OUTPUT_MARKER) == "job-1"
    assert s3.head_object(Bucket=BUCKET, Key="outbox/small.txt")["ContentType"] == "text/plain"
    # A small write is a single PutObject, not a one-part multipart upload.
    assert "-" not in s3.head_object(Bucket=BUCKET, Key="outbox/small.txt")["ETag"]


def test_empty_write_creates_empty_object(storage: S3Storage) -> None:
    assert storage.write_stream(BUCKET, "outbox/empty.bin", []) == 0
    ref = storage.stat(BUCKET, "outbox/empty.bin")
    assert ref is not None and ref.size == 0


def test_large_write_is_multipart_and_round_trips(storage: S3Storage, s3: Any) -> None:
    # Two full parts plus a ragged tail, fed in chunk sizes that never line up with a part.
    data = random.Random(7).randbytes(2 * PART_SIZE + 1_234_567)
    written = storage.write_stream(
        BUCKET,
        "outbox/large.bin",
        chunked(data, [1, 777_777, 3_000_001, 65_537, 4_194_305]),
        metadata={OUTPUT_MARKER: "job-2"},
    )

    assert written == len(data)
    chunks = list(storage.read_stream(BUCKET, "outbox/large.bin"))
    assert max(len(c) for c in chunks) <= READ_CHUNK
    assert b"".join(chunks) == data
    ref = storage.stat(BUCKET, "outbox/large.bin")
    assert ref is not None
    assert ref.size == len(data)
    assert ref.metadata.get(OUTPUT_MARKER) == "job-2"
    # A multipart ETag ends in -<number of parts>.
    assert s3.head_object(Bucket=BUCKET, Key="outbox/large.bin")["ETag"].endswith('-3"')
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_write_of_exactly_two_parts_has_no_empty_tail_part(storage: S3Storage, s3: Any) -> None:
    data = random.Random(8).randbytes(2 * PART_SIZE)

    assert storage.write_stream(BUCKET, "outbox/even.bin", chunked(data, [PART_SIZE])) == len(data)
    assert storage.read_bytes(BUCKET, "outbox/even.bin") == data
    assert s3.head_object(Bucket=BUCKET, Key="outbox/even.bin")["ETag"].endswith('-2"')


def test_source_failing_before_first_part_leaves_nothing(storage: S3Storage, s3: Any) -> None:
    data = random.Random(9).randbytes(PART_SIZE // 2)

    with pytest.raises(ConnectionError, match="source stream broke"):
        storage.write_stream(BUCKET, "outbox/broken-small.bin", failing_after(data, 100_003, 1))

    assert storage.stat(BUCKET, "outbox/broken-small.bin") is None
    assert_nothing_left(s3, "outbox/broken-small.bin")


def test_source_failing_mid_multipart_aborts_the_upload(storage: S3Storage, s3: Any) -> None:
    data = random.Random(10).randbytes(3 * PART_SIZE)
    # Fail after one part has been uploaded, so an upload really is pending at that moment.
    source = failing_after(data, 1_048_583, PART_SIZE + PART_SIZE // 2)

    with pytest.raises(ConnectionError, match="source stream broke"):
        storage.write_stream(BUCKET, "outbox/broken-large.bin", source)

    assert storage.stat(BUCKET, "outbox/broken-large.bin") is None
    assert_nothing_left(s3, "outbox/broken-large.bin")


def test_failed_write_keeps_the_previous_object(storage: S3Storage) -> None:
    storage.write_stream(BUCKET, "outbox/keep.bin", [b"first version"])
    data = random.Random(11).randbytes(2 * PART_SIZE)

    with pytest.raises(ConnectionError):
        storage.write_stream(BUCKET, "outbox/keep.bin", failing_after(data, 999_999, PART_SIZE + 1))

    assert storage.read_bytes(BUCKET, "outbox/keep.bin") == b"first version"


def test_stat_of_missing_key_is_none(storage: S3Storage) -> None:
    assert storage.stat(BUCKET, "inbox/never-written.png") is None


def test_write_json_round_trip(storage: S3Storage, s3: Any) -> None:
    document = {"job": "j-1", "outputs": [{"key": "outbox/résumé.pdf", "size": 3}], "ok": True}

    revision = storage.write_json(BUCKET, "records/j-1.json", document, marker="record")

    body = storage.read_bytes(BUCKET, "records/j-1.json")
    assert revision == s3.head_object(Bucket=BUCKET, Key="records/j-1.json")["ETag"]
    assert json.loads(body) == document
    ref = storage.stat(BUCKET, "records/j-1.json")
    assert ref is not None and ref.metadata.get(OUTPUT_MARKER) == "record"
    head = s3.head_object(Bucket=BUCKET, Key="records/j-1.json")
    assert head["ContentType"] == "application/json"


def test_a_conditional_record_write_loses_to_a_newer_one(storage: S3Storage) -> None:
    first = storage.write_json(BUCKET, "records/race.json", {"status": "submitting"}, marker="r")
    storage.write_json(BUCKET, "records/race.json", {"status": "finished"}, marker="r")
    with pytest.raises(StaleWrite):
        storage.write_json(BUCKET, "records/race.json", {"status": "submitted"}, marker="r",
                           if_revision=first)
    assert json.loads(storage.read_bytes(BUCKET, "records/race.json")) == {"status": "finished"}


# -- outputs are create-only ---------------------------------------------------------------

TAG = {OUTPUT_MARKER: "rule", SOURCE_TAG: source_tag(BUCKET, "inbox/a.png")}
SIZES = [1000, PART_SIZE + 1000]  # one PutObject; a multipart upload


@pytest.mark.parametrize("size", SIZES)
def test_an_output_never_replaces_an_object_the_bridge_did_not_make_for_its_source(
        storage: S3Storage, s3: Any, size: int) -> None:
    s3.put_object(Bucket=BUCKET, Key="outbox/a.png.pdf", Body=b"the user's own file")
    s3.put_object(Bucket=BUCKET, Key="outbox/b.png.pdf", Body=b"another source's output",
                  Metadata={OUTPUT_MARKER: "rule", SOURCE_TAG: source_tag(BUCKET, "inbox/b.png")})
    for key in ("outbox/a.png.pdf", "outbox/b.png.pdf"):
        with pytest.raises(OutputCollision):
            storage.write_stream(BUCKET, key, [b"x" * size], metadata=TAG)
    assert s3.get_object(Bucket=BUCKET, Key="outbox/a.png.pdf")["Body"].read() == (
        b"the user's own file")
    assert s3.get_object(Bucket=BUCKET, Key="outbox/b.png.pdf")["Body"].read() == (
        b"another source's output")
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


@pytest.mark.parametrize("size", SIZES)
def test_an_output_replaces_an_earlier_output_of_the_same_source(
        storage: S3Storage, s3: Any, size: int) -> None:
    assert storage.write_stream(BUCKET, "outbox/a.png.pdf", [b"first"], metadata=TAG) == 5
    assert storage.write_stream(BUCKET, "outbox/a.png.pdf", [b"y" * size], metadata=TAG) == size
    head = s3.head_object(Bucket=BUCKET, Key="outbox/a.png.pdf")
    assert head["ContentLength"] == size and head["Metadata"] == TAG


def test_an_object_appearing_during_a_multipart_output_is_left_alone(
        storage: S3Storage, s3: Any) -> None:
    """The key was free when the write began: only the If-None-Match on
    CompleteMultipartUpload stops the output from replacing what appeared meanwhile."""

    def chunks() -> Iterator[bytes]:
        yield b"a" * PART_SIZE
        s3.put_object(Bucket=BUCKET, Key="outbox/raced.png.pdf", Body=b"appeared meanwhile")
        yield b"b" * 1000

    with pytest.raises(OutputCollision):
        storage.write_stream(BUCKET, "outbox/raced.png.pdf", chunks(), metadata=TAG)
    assert s3.get_object(Bucket=BUCKET, Key="outbox/raced.png.pdf")["Body"].read() == (
        b"appeared meanwhile")
    assert not s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_a_create_only_record_write_is_refused_once_a_record_exists(storage: S3Storage) -> None:
    check_conditional_record_writes(storage, BUCKET)
