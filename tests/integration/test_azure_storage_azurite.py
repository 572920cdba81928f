"""AzureBlobStorage byte moving against Azurite: small puts and block-staged writes of odd-sized
chunks round-trip through read_stream and stat; a short or failing stream leaves nothing visible
(and an older blob untouched); conditional record writes lose to newer ones; an output write
(carrying the source tag) is create-only but for the same source's earlier output; metadata,
listing, copy and delete behave as the Storage contract says. Grant scoping is
test_azure_sas_scope.py.

Azurite must start: if it cannot, these tests fail saying how to install it (``make servers``).
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient

from convbridge.errors import OutputCollision, StaleWrite, StorageError
from convbridge.model import OUTPUT_MARKER, SOURCE_TAG, source_tag
from convbridge.storage import azure_blob
from convbridge.storage.azure_blob import AzureBlobStorage
from devstack.servers import ServerStartError
from devstack.servers_azure import ACCOUNT_KEY, ACCOUNT_NAME, AzuriteServer
from tests.conditional_writes import check_conditional_record_writes

SMALL_BLOCK = 64 * 1024


@pytest.fixture
def container(azurite: AzuriteServer) -> ContainerClient:
    service = BlobServiceClient(azurite.endpoint_url, credential={
        "account_name": ACCOUNT_NAME, "account_key": ACCOUNT_KEY})
    return service.create_container(f"w-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def storage(azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> AzureBlobStorage:
    # small blocks exercise staging without moving megabytes
    monkeypatch.setattr(azure_blob, "BLOCK_SIZE", SMALL_BLOCK)
    return AzureBlobStorage(account_name=ACCOUNT_NAME, account_key=lambda: ACCOUNT_KEY,
                            endpoint=azurite.endpoint_url, allow_http=True)


@pytest.fixture
def where(container: ContainerClient) -> str:
    return f"{ACCOUNT_NAME}/{container.container_name}"


def chunked(data: bytes, sizes: Iterable[int]) -> Iterator[bytes]:
    sizes = list(sizes)
    position = index = 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        yield data[position:position + size]
        position += size
        index += 1


def failing_after(data: bytes, count: int) -> Iterator[bytes]:
    yield from chunked(data[:count], [7001])
    raise ConnectionError("the source went away")


def test_small_write_round_trips_with_metadata(storage: AzureBlobStorage, where: str,
                                               container: ContainerClient) -> None:
    written = storage.write_stream(where, "a/b c.txt", [b"hello ", b"world"],
                                   content_type="text/plain",
                                   metadata={OUTPUT_MARKER: "rule-1"}, expected_size=11)
    assert written == 11
    found = storage.stat(where, "a/b c.txt")
    assert found is not None and found.size == 11 and found.version
    assert not found.version.startswith('"')
    assert found.metadata == {OUTPUT_MARKER: "rule-1"}
    props = container.get_blob_client("a/b c.txt").get_blob_properties()
    assert props.metadata == {"convbridge_output": "rule-1"}
    assert props.content_settings.content_type == "text/plain"
    assert storage.read_bytes(where, "a/b c.txt") == b"hello world"


def test_large_write_is_staged_in_blocks_and_round_trips(storage: AzureBlobStorage, where: str,
                                                         container: ContainerClient) -> None:
    data = random.Random(4).randbytes(5 * SMALL_BLOCK + 123)
    written = storage.write_stream(where, "big.bin", chunked(data, [1000, 65536, 3]),
                                   expected_size=len(data))
    assert written == len(data)
    blocks = container.get_blob_client("big.bin").get_block_list("committed")[0]
    assert len(blocks) == 6
    assert b"".join(storage.read_stream(where, "big.bin")) == data


def test_exactly_whole_blocks_leave_no_empty_tail(storage: AzureBlobStorage, where: str,
                                                  container: ContainerClient) -> None:
    data = bytes(2 * SMALL_BLOCK)
    assert storage.write_stream(where, "two.bin", [data], expected_size=len(data)) == len(data)
    assert len(container.get_blob_client("two.bin").get_block_list("committed")[0]) == 2


@pytest.mark.parametrize("count", [10, 3 * SMALL_BLOCK + 5])
def test_a_failing_source_leaves_nothing_behind(storage: AzureBlobStorage, where: str,
                                                count: int) -> None:
    data = bytes(4 * SMALL_BLOCK)
    with pytest.raises(ConnectionError):
        storage.write_stream(where, "gone.bin", failing_after(data, count))
    assert storage.stat(where, "gone.bin") is None
    assert list(storage.list_keys(where, "")) == []


@pytest.mark.parametrize("size", [100, 3 * SMALL_BLOCK + 5])
def test_a_short_stream_keeps_the_previous_blob(storage: AzureBlobStorage, where: str,
                                                size: int) -> None:
    storage.put_bytes(where, "kept.pdf", b"older", content_type="application/pdf", metadata={})
    with pytest.raises(StorageError, match="nothing was written"):
        storage.write_stream(where, "kept.pdf", [bytes(size)], expected_size=size + 1)
    assert storage.read_bytes(where, "kept.pdf") == b"older"


def test_a_conditional_record_write_loses_to_a_newer_one(storage: AzureBlobStorage,
                                                         where: str) -> None:
    first = storage.write_json(where, "r.json", {"status": "submitting"}, marker="rule")
    storage.write_json(where, "r.json", {"status": "finished"}, marker="rule")
    with pytest.raises(StaleWrite):
        storage.write_json(where, "r.json", {"status": "submitted"}, marker="rule",
                           if_revision=first)
    assert json.loads(storage.read_bytes(where, "r.json")) == {"status": "finished"}
    latest = storage.stat(where, "r.json")
    assert latest is not None and latest.version
    storage.write_json(where, "r.json", {"status": "x"}, marker="rule", if_revision=latest.version)
    storage.delete(where, "r.json")
    with pytest.raises(StaleWrite):
        storage.write_json(where, "r.json", {"status": "y"}, marker="rule",
                           if_revision=latest.version)


def test_list_copy_and_delete(storage: AzureBlobStorage, where: str) -> None:
    for key in ("in/a.png", "in/b/c.png", "out/d.pdf"):
        storage.put_bytes(where, key, key.encode(), content_type="image/png",
                          metadata={"origin": "test"})
    assert sorted(storage.list_keys(where, "in/")) == ["in/a.png", "in/b/c.png"]
    assert storage.copy(where, "in/a.png", "failed/a.png") == len(b"in/a.png")
    copied = storage.stat(where, "failed/a.png")
    assert copied is not None and copied.metadata == {"origin": "test"}
    assert storage.read_bytes(where, "failed/a.png") == b"in/a.png"
    storage.delete(where, "in/a.png")
    storage.delete(where, "in/a.png")  # deleting what is gone is not an error
    assert storage.stat(where, "in/a.png") is None
    with pytest.raises(StorageError, match="does not exist"):
        storage.copy(where, "in/a.png", "x.png")


def test_errors_are_storage_errors_without_credentials(storage: AzureBlobStorage) -> None:
    with pytest.raises(StorageError) as caught:
        storage.read_bytes(f"{ACCOUNT_NAME}/no-such-container", "a.png")
    assert "ContainerNotFound" in str(caught.value) or "BlobNotFound" in str(caught.value)
    assert ACCOUNT_KEY not in str(caught.value) and "sig=" not in str(caught.value)
    with pytest.raises(StorageError, match="not <account>/<container>"):
        storage.stat("just-a-container", "a.png")


def test_a_missing_azurite_fails_saying_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="make servers"):
        AzuriteServer(binary=tmp_path / "azurite-blob").start()


# -- outputs are create-only ---------------------------------------------------------------

TAG = {OUTPUT_MARKER: "rule", SOURCE_TAG: source_tag("acct/box", "inbox/a.png")}
SIZES = [1000, 3 * SMALL_BLOCK + 5]  # one Put Blob; staged blocks and Put Block List


@pytest.mark.parametrize("size", SIZES)
def test_an_output_never_replaces_a_blob_the_bridge_did_not_make_for_its_source(
        storage: AzureBlobStorage, where: str, container: ContainerClient, size: int) -> None:
    container.upload_blob("outbox/a.png.pdf", b"the user's own file")
    container.upload_blob("outbox/b.png.pdf", b"another source's output", metadata={
        "convbridge_output": "rule", "convbridge_source": source_tag("acct/box", "inbox/b.png")})
    for key in ("outbox/a.png.pdf", "outbox/b.png.pdf"):
        with pytest.raises(OutputCollision):
            storage.write_stream(where, key, chunked(b"x" * size, [7001]), metadata=TAG)
    assert container.download_blob("outbox/a.png.pdf").readall() == b"the user's own file"
    assert container.download_blob("outbox/b.png.pdf").readall() == b"another source's output"


@pytest.mark.parametrize("size", SIZES)
def test_an_output_replaces_an_earlier_output_of_the_same_source(
        storage: AzureBlobStorage, where: str, container: ContainerClient, size: int) -> None:
    storage.write_stream(where, "outbox/a.png.pdf", [b"first"], metadata=TAG)
    data = bytes(random.Random(size).randbytes(size))
    assert storage.write_stream(where, "outbox/a.png.pdf", chunked(data, [7001]),
                                metadata=TAG) == size
    assert container.download_blob("outbox/a.png.pdf").readall() == data
    found = storage.stat(where, "outbox/a.png.pdf")
    assert found is not None and found.metadata == TAG


def test_a_blob_appearing_during_a_staged_output_is_left_alone(
        storage: AzureBlobStorage, where: str, container: ContainerClient) -> None:
    """The name was free when the write began: only If-None-Match on Put Block List stops the
    output from replacing what appeared meanwhile."""

    def chunks() -> Iterator[bytes]:
        yield b"a" * SMALL_BLOCK
        # overwrite: Azurite counts the staged blocks as a blob already there
        container.upload_blob("outbox/raced.png.pdf", b"appeared meanwhile", overwrite=True)
        yield b"b" * 1000

    with pytest.raises(OutputCollision):
        storage.write_stream(where, "outbox/raced.png.pdf", chunks(), metadata=TAG)
    assert container.download_blob("outbox/raced.png.pdf").readall() == b"appeared meanwhile"


def test_a_create_only_record_write_is_refused_once_a_record_exists(
        storage: AzureBlobStorage, where: str) -> None:
    check_conditional_record_writes(storage, where)
