"""The relay is bounded, against real servers: loopback download servers (chunked answers with
no length, answers longer than the provider announced, redirects), moto S3, Azurite,
fake-gcs-server and OpenSSH (asyncssh where sshd cannot run).

An output that runs past the announced size or the rule's ``max_output_bytes`` is stopped while
streaming, right after the first bytes past the bound, never retried, and leaves nothing in the
storage (no object, no open multipart upload, no committed blob, no temporary file). An output
URL that is not https on an allowed host, or that redirects to one, is never requested. The
last tests run the deployed code path (the dev stack: sandbox, webhook, records) and read the
failure report a user would find.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import httpx
import paramiko
import pytest
from azure.storage.blob import BlobServiceClient
from google.oauth2 import service_account

from convbridge.errors import OutputHostRefused, OutputRefused, OutputTooLarge
from convbridge.http import MAX_DOWNLOAD_REDIRECTS, HostPattern
from convbridge.model import OutputFile, source_tag
from convbridge.pipeline import RELAY_CHUNK, RelayPolicy, relay_output
from convbridge.storage import azure_blob
from convbridge.storage.azure_blob import AzureBlobStorage
from convbridge.storage.gcs import GcsStorage, storage_client
from convbridge.storage.s3 import PART_SIZE, S3_CLIENT_CONFIG, S3Storage
from convbridge.storage.sftp import PinnedHostKeys, SftpAccount, SftpStorage
from devstack.bulk_http import PatternServer, RedirectServer, expected_digest
from devstack.harness.base import DEFAULT_RULES
from devstack.harness.gcs import service_account_key
from devstack.servers import MotoServer
from devstack.servers_azure import ACCOUNT_KEY, ACCOUNT_NAME, AzuriteServer
from devstack.servers_gcs import FakeGcsServer
from devstack.servers_sftp import DROP, SftpServer, openssh_available
from devstack.stack import DevStack
from tests.conftest import png_bytes

MIB = 1024 * 1024
BUCKET = "relay-bounds"
#: the source tag every output written here carries (the outputs are create-only)
SOURCE = source_tag(BUCKET, "inbox/any.png")
#: what the dev stack allows: its loopback servers over plain http
LOOPBACK = (HostPattern("127.0.0.1", plain_http=True),)
#: bytes a stopped download may have pulled past its bound: the chunk that crossed it, and
#: what the transport had already read ahead
SLACK = 2 * RELAY_CHUNK


class CountingTransport(httpx.HTTPTransport):
    """Counts the body bytes the relay read from the network and the hosts it asked, so a test
    sees what was downloaded, not only what was written."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes_read = 0
        self.hosts: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.hosts.append(request.url.host)
        response = super().handle_request(request)
        inner, outer = response.stream, self

        class Counted(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for chunk in inner:  # type: ignore[union-attr]
                    outer.bytes_read += len(chunk)
                    yield chunk

            def close(self) -> None:
                inner.close()  # type: ignore[union-attr]

        response.stream = Counted()
        return response


@pytest.fixture
def transport() -> CountingTransport:
    return CountingTransport()


@pytest.fixture
def http(transport: CountingTransport) -> Iterator[httpx.Client]:
    with httpx.Client(transport=transport, timeout=30) as client:
        yield client


@pytest.fixture
def s3(moto: MotoServer):  # type: ignore[no-untyped-def]
    client = boto3.client("s3", endpoint_url=moto.endpoint_url, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          config=S3_CLIENT_CONFIG)
    client.create_bucket(Bucket=BUCKET)
    return client


def nothing_in_s3(s3) -> bool:  # type: ignore[no-untyped-def]
    return (s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0
            and s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == [])


# ----------------------------------------------------------------------------- size, S3


def test_a_download_without_a_length_past_max_output_bytes_leaves_nothing_in_s3(
        s3, http: httpx.Client, transport: CountingTransport) -> None:  # type: ignore[no-untyped-def]
    limit = PART_SIZE + 4 * MIB  # past one part: a multipart upload was under way
    with PatternServer(chunked=True) as source:
        with pytest.raises(OutputTooLarge, match=f"max_output_bytes of {limit} bytes"):
            relay_output(http, S3Storage(s3_client=s3), BUCKET, "outbox/endless.bin",
                         OutputFile(filename="endless.bin", url=source.url(40 * MIB)),
                         marker="rule", source=SOURCE,
                         policy=RelayPolicy(LOOPBACK, max_bytes=limit))
        assert source.requests == 1  # not retried
    assert limit < transport.bytes_read <= limit + SLACK
    assert nothing_in_s3(s3)


@pytest.mark.parametrize("chunked", [True, False], ids=["no-length", "honest-length"])
def test_an_output_announced_at_1000_bytes_is_stopped_right_after_them(
        s3, http: httpx.Client, transport: CountingTransport, chunked: bool) -> None:  # type: ignore[no-untyped-def]
    """The provider says 1,000 bytes; the URL serves 48 MiB. Without a length the stream is
    cut right after byte 1,000; with an honest Content-Length it is refused before the body."""
    with PatternServer(chunked=chunked) as source:
        with pytest.raises(OutputTooLarge, match="1000 bytes the provider announced") as refused:
            relay_output(http, S3Storage(s3_client=s3), BUCKET, "outbox/small.pdf",
                         OutputFile(filename="small.pdf", size=1000, url=source.url(48 * MIB)),
                         marker="rule", source=SOURCE,
                         policy=RelayPolicy(LOOPBACK, max_bytes=10 * MIB))
        assert source.requests == 1
    assert refused.value.code == "OUTPUT_TOO_LARGE"
    if chunked:
        assert 1000 < transport.bytes_read <= 1000 + SLACK
    else:
        assert transport.bytes_read == 0
    assert source.bytes_sent < 48 * MIB  # the server was left with most of it
    assert nothing_in_s3(s3)


def test_a_length_over_max_output_bytes_is_refused_before_the_body(
        s3, http: httpx.Client, transport: CountingTransport) -> None:  # type: ignore[no-untyped-def]
    with PatternServer() as source:
        with pytest.raises(OutputTooLarge, match="max_output_bytes of 1048576 bytes"):
            relay_output(http, S3Storage(s3_client=s3), BUCKET, "outbox/big.bin",
                         OutputFile(filename="big.bin", url=source.url(2 * MIB)),
                         marker="rule", source=SOURCE,
                         policy=RelayPolicy(LOOPBACK, max_bytes=MIB))
        assert source.requests == 1
    assert transport.bytes_read == 0
    assert nothing_in_s3(s3)


@pytest.mark.parametrize("size", [3 * MIB, PART_SIZE + 2 * MIB])
def test_a_download_without_a_length_up_to_the_limit_is_written_whole(
        s3, http: httpx.Client, size: int) -> None:  # type: ignore[no-untyped-def]
    storage = S3Storage(s3_client=s3)
    with PatternServer(chunked=True) as source:
        written = relay_output(http, storage, BUCKET, "outbox/exact.bin",
                               OutputFile(filename="exact.bin", url=source.url(size)),
                               marker="rule", source=SOURCE,
                               policy=RelayPolicy(LOOPBACK, max_bytes=size))
    assert written == size
    body = s3.get_object(Bucket=BUCKET, Key="outbox/exact.bin")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == expected_digest(size)
    s3.delete_object(Bucket=BUCKET, Key="outbox/exact.bin")


# ------------------------------------------------------------------- size, other storages


@pytest.fixture
def azure_storage(azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch
                  ) -> tuple[AzureBlobStorage, str, BlobServiceClient]:
    monkeypatch.setattr(azure_blob, "BLOCK_SIZE", 256 * 1024)  # blocks staged before the cut
    service = BlobServiceClient(azurite.endpoint_url, credential={
        "account_name": ACCOUNT_NAME, "account_key": ACCOUNT_KEY})
    container = service.create_container(f"bounds-{uuid.uuid4().hex[:12]}").container_name
    storage = AzureBlobStorage(account_name=ACCOUNT_NAME, account_key=lambda: ACCOUNT_KEY,
                               endpoint=azurite.endpoint_url, allow_http=True)
    return storage, container, service


def test_an_over_size_output_leaves_no_blob_in_azure(
        azure_storage: tuple[AzureBlobStorage, str, BlobServiceClient],
        http: httpx.Client, transport: CountingTransport) -> None:
    storage, container, service = azure_storage
    with PatternServer(chunked=True) as source:
        with pytest.raises(OutputTooLarge, match="max_output_bytes"):
            relay_output(http, storage, f"{ACCOUNT_NAME}/{container}", "outbox/big.bin",
                         OutputFile(filename="big.bin", url=source.url(8 * MIB)),
                         marker="rule", source=SOURCE,
                         policy=RelayPolicy(LOOPBACK, max_bytes=MIB))
        assert source.requests == 1
    assert transport.bytes_read <= MIB + SLACK
    client = service.get_container_client(container)
    # staged blocks are never committed: nothing is listed, nothing can be read
    assert list(client.list_blobs()) == []
    assert not client.get_blob_client("outbox/big.bin").exists()


@pytest.fixture(scope="module")
def gcs_server() -> Iterator[FakeGcsServer]:
    with FakeGcsServer() as server:
        yield server


def test_an_over_size_output_leaves_no_object_in_gcs(
        gcs_server: FakeGcsServer, http: httpx.Client, transport: CountingTransport) -> None:
    credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
        service_account_key())
    client = storage_client(credentials, gcs_server.endpoint_url)
    name = f"bounds-{uuid.uuid4().hex[:12]}"
    client.create_bucket(name)
    # 256 KiB pieces: several go out in a resumable session before the cut
    gcs = GcsStorage(client=client, signer=credentials, chunk_size=256 * 1024)
    with PatternServer(chunked=True) as source:
        with pytest.raises(OutputTooLarge, match="max_output_bytes"):
            relay_output(http, gcs, name, "outbox/big.bin",
                         OutputFile(filename="big.bin", url=source.url(8 * MIB)),
                         marker="rule", source=SOURCE,
                         policy=RelayPolicy(LOOPBACK, max_bytes=MIB))
        assert source.requests == 1
    assert transport.bytes_read <= MIB + SLACK
    assert list(gcs.list_keys(name, "")) == []
    assert gcs.stat(name, "outbox/big.bin") is None


@pytest.fixture(params=["openssh", "asyncssh"] if openssh_available() is None else ["asyncssh"])
def sftp_server(request: pytest.FixtureRequest) -> Iterator[SftpServer]:
    with SftpServer(backend=request.param) as running:
        yield running


def test_an_over_size_output_leaves_no_file_and_no_partial_on_sftp(
        sftp_server: SftpServer, http: httpx.Client, transport: CountingTransport) -> None:
    account = SftpAccount(username=sftp_server.username, password=None,
                          private_key=sftp_server.private_key)
    drop = SftpStorage(account=lambda: account,
                       host_keys=PinnedHostKeys(sftp_server.host_public_key), root=DROP)
    drop.put_bytes(sftp_server.location, "outbox/keep.txt", b"already here",
                   content_type="text/plain", metadata={})
    with PatternServer(chunked=True) as source:
        with pytest.raises(OutputTooLarge, match="max_output_bytes"):
            relay_output(http, drop, sftp_server.location, "outbox/big.bin",
                         OutputFile(filename="big.bin", url=source.url(8 * MIB)),
                         marker="rule", source=SOURCE,
                         policy=RelayPolicy(LOOPBACK, max_bytes=MIB))
        assert source.requests == 1
    assert transport.bytes_read <= MIB + SLACK
    # the raw listing, temporary names included: the partial file was removed
    ssh = paramiko.SSHClient()
    ssh.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # loopback test server
    ssh.connect(sftp_server.host, port=sftp_server.port, username=sftp_server.username,
                password=sftp_server.password, allow_agent=False, look_for_keys=False)
    try:
        assert ssh.open_sftp().listdir(f"{DROP}/outbox") == ["keep.txt"]
    finally:
        ssh.close()


# ------------------------------------------------------------------------------ hosts


def test_an_output_url_on_the_metadata_address_is_never_requested(
        s3, http: httpx.Client, transport: CountingTransport) -> None:  # type: ignore[no-untyped-def]
    url = "http://169.254.169.254/latest/meta-data/iam/security-credentials/role"
    with pytest.raises(OutputHostRefused, match="http://169.254.169.254 is not an allowed") as no:
        relay_output(http, S3Storage(s3_client=s3), BUCKET, "outbox/creds.json",
                     OutputFile(filename="creds.json", url=url), marker="rule",
                     source=SOURCE,
                     policy=RelayPolicy(LOOPBACK, max_bytes=MIB))
    assert transport.hosts == []
    assert no.value.code == "OUTPUT_HOST_REFUSED" and "security-credentials" not in str(no.value)
    assert nothing_in_s3(s3)


def test_an_output_url_on_a_host_outside_the_list_is_never_requested(
        s3, http: httpx.Client, transport: CountingTransport) -> None:  # type: ignore[no-untyped-def]
    with PatternServer(host="127.0.0.2") as elsewhere:
        with pytest.raises(OutputHostRefused, match="127.0.0.2"):
            relay_output(http, S3Storage(s3_client=s3), BUCKET, "outbox/a.pdf",
                         OutputFile(filename="a.pdf", url=elsewhere.url(1000)), marker="rule",
                         source=SOURCE,
                         policy=RelayPolicy(LOOPBACK, max_bytes=MIB))
        assert elsewhere.requests == 0
    assert transport.hosts == []
    assert nothing_in_s3(s3)


def test_plain_http_is_refused_unless_an_entry_allows_it(
        s3, http: httpx.Client, transport: CountingTransport) -> None:  # type: ignore[no-untyped-def]
    """Outside the dev stack every allowed host is https only: the same loopback host listed
    without ``http://`` does not let a plain-http URL through."""
    with PatternServer() as source:
        with pytest.raises(OutputHostRefused, match="allowed: https://127.0.0.1"):
            relay_output(http, S3Storage(s3_client=s3), BUCKET, "outbox/a.pdf",
                         OutputFile(filename="a.pdf", url=source.url(1000)), marker="rule",
                         source=SOURCE,
                         policy=RelayPolicy((HostPattern("127.0.0.1"),), max_bytes=MIB))
        assert source.requests == 0
    assert transport.hosts == []
    assert nothing_in_s3(s3)


@pytest.mark.parametrize("target", ["other-host", "metadata"])
def test_a_redirect_to_a_host_outside_the_list_is_not_followed(
        s3, http: httpx.Client, transport: CountingTransport, target: str) -> None:  # type: ignore[no-untyped-def]
    with PatternServer(host="127.0.0.2") as elsewhere:
        location = (elsewhere.url(1000) if target == "other-host"
                    else "http://169.254.169.254/latest/meta-data/")
        with RedirectServer(location) as provider:
            with pytest.raises(OutputHostRefused, match="is not an allowed download origin"):
                relay_output(http, S3Storage(s3_client=s3), BUCKET, "outbox/a.pdf",
                             OutputFile(filename="a.pdf", url=provider.url), marker="rule",
                             source=SOURCE,
                             policy=RelayPolicy(LOOPBACK, max_bytes=MIB))
            assert provider.requests == 1  # refused, not retried
        assert elsewhere.requests == 0
    assert transport.hosts == ["127.0.0.1"]
    assert nothing_in_s3(s3)


@pytest.mark.parametrize("status", [302, 307])
def test_a_redirect_within_the_list_is_followed_into_the_bucket(
        s3, http: httpx.Client, transport: CountingTransport, status: int) -> None:  # type: ignore[no-untyped-def]
    """A provider's URL answering with a redirect to its storage host (both allowed)."""
    size = 3 * MIB
    with PatternServer() as storage_host, RedirectServer(storage_host.url(size),
                                                         status=status) as provider:
        written = relay_output(http, S3Storage(s3_client=s3), BUCKET, "outbox/moved.bin",
                               OutputFile(filename="moved.bin", size=size, url=provider.url),
                               marker="rule", source=SOURCE,
                               policy=RelayPolicy(LOOPBACK, max_bytes=size))
        assert (provider.requests, storage_host.requests) == (1, 1)
    assert written == size
    body = s3.get_object(Bucket=BUCKET, Key="outbox/moved.bin")["Body"].read()
    assert hashlib.sha256(body).hexdigest() == expected_digest(size)
    s3.delete_object(Bucket=BUCKET, Key="outbox/moved.bin")


def test_a_redirect_loop_is_refused_after_a_few_hops(
        s3, http: httpx.Client) -> None:  # type: ignore[no-untyped-def]
    with RedirectServer("/download") as provider:  # relative: back to itself
        with pytest.raises(OutputRefused, match=f"more than {MAX_DOWNLOAD_REDIRECTS} times"):
            relay_output(http, S3Storage(s3_client=s3), BUCKET, "outbox/a.pdf",
                         OutputFile(filename="a.pdf", url=provider.url), marker="rule",
                         source=SOURCE,
                         policy=RelayPolicy(LOOPBACK, max_bytes=MIB))
        assert provider.requests == MAX_DOWNLOAD_REDIRECTS + 1
    assert nothing_in_s3(s3)


# ------------------------------------------------------------- through the deployed path


#: FreeConvert hands S3 outputs back as download URLs: the relay writes them
RELAYED = DEFAULT_RULES.replace("provider: cloudconvert", "provider: freeconvert") % {
    "storage": "s3", "location": "convbridge-demo", "read_grant": "presigned_url"}


def convert_one(stack: DevStack) -> dict[str, Any]:
    stack.upload("inbox/photo.png", png_bytes())
    stack.trigger(stack.s3_event("inbox/photo.png"))
    stack.wait()
    report = stack.read_json("failures/photo.png.json")
    assert report is not None and report["status"] == "failed", stack.objects()
    assert stack.read_json("results/photo.png.json")["status"] == "failed"  # type: ignore[index]
    assert stack.objects("outbox/") == {}
    error: dict[str, Any] = report["error"]
    return error


def test_an_output_over_the_rules_max_output_bytes_gets_a_failure_report() -> None:
    with DevStack(rules_text=RELAYED + "    max_output_bytes: 100\n") as stack:
        error = convert_one(stack)
        assert (error["task"], error["code"]) == ("relay", "OUTPUT_TOO_LARGE")
        assert "max_output_bytes of 100 bytes" in error["message"]
        # the file was asked for once, through the provider's redirect: not retried
        assert [d["status"] for d in stack.sandbox.downloads()] == [302, 200]


def test_without_the_dev_stack_entry_the_sandbox_download_is_never_requested() -> None:
    """What a deployment does with a plain-http URL on its provider's own host: refuse it."""
    with DevStack(rules_text=RELAYED, env={"CONVBRIDGE_RELAY_EXTRA_HOSTS": ""}) as stack:
        error = convert_one(stack)
        assert (error["task"], error["code"]) == ("relay", "OUTPUT_HOST_REFUSED")
        origin = stack.sandbox.url  # http://127.0.0.1:PORT
        assert error["message"].startswith(
            f"the output URL's origin {origin} is not an allowed download origin")
        assert "/files/" not in error["message"]  # the path carries the download's token
        assert stack.sandbox.downloads() == []
