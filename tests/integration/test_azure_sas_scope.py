"""The SAS grants the Azure adapter mints reach exactly what they promise, as Azurite enforces it:
the read grant reads its one blob and nothing else, the write grant creates its one output blob
once and can do nothing else (not read, not overwrite, not touch the source, not create another
source's outputs: sampled with generated keys). Every request goes over plain HTTP with only the
token, as a provider would send it; the server decides.

Azurite must start: if it cannot, these tests fail saying how to install it (``make servers``).
"""

from __future__ import annotations

import time
import uuid
from urllib.parse import quote

import httpx
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient
from hypothesis import HealthCheck, given, settings

from convbridge.errors import ConfigError, GrantError, StorageError
from convbridge.model import Grant, ObjectRef, OutputTarget
from convbridge.storage.azure_blob import AzureBlobStorage
from devstack.servers_azure import ACCOUNT_KEY, ACCOUNT_NAME, AzuriteServer
from tests.name_strategies import RULE, grantable_pairs

SOURCE = "inbox/photos/a b+ü.png"
OTHER = "inbox/photos/other.png"
OUTPUT = "outbox/photos/a b+ü.png.pdf"


@pytest.fixture
def container(azurite: AzuriteServer) -> ContainerClient:
    service = BlobServiceClient(azurite.endpoint_url, credential={
        "account_name": ACCOUNT_NAME, "account_key": ACCOUNT_KEY})
    client = service.create_container(f"s-{uuid.uuid4().hex[:12]}")
    client.upload_blob(SOURCE, b"the source")
    client.upload_blob(OTHER, b"another blob")
    return client


@pytest.fixture
def storage(azurite: AzuriteServer) -> AzureBlobStorage:
    return AzureBlobStorage(account_name=ACCOUNT_NAME, account_key=lambda: ACCOUNT_KEY,
                            endpoint=azurite.endpoint_url, allow_http=True)


def location(container: ContainerClient) -> str:
    return f"{ACCOUNT_NAME}/{container.container_name}"


def blob_url(storage: AzureBlobStorage, container: ContainerClient, key: str,
             grant: Grant) -> str:
    return f"{storage.blob_url(location(container), key)}?{grant.secret['sas_token']}"


def put(url: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.put(url, content=body, headers={"x-ms-blob-type": "BlockBlob", **headers})


def test_the_read_grant_reads_its_blob_and_nothing_else(storage: AzureBlobStorage,
                                                         container: ContainerClient) -> None:
    grant = storage.grant_read(ObjectRef("azure_blob", location(container), SOURCE), 300,
                               kind="sas")
    assert grant.kind == "sas" and grant.key == SOURCE
    token = grant.secret["sas_token"]
    assert "sr=b" in token and "sp=r&" in token and grant.secret["account_name"] == ACCOUNT_NAME
    assert grant.url == blob_url(storage, container, SOURCE, grant)
    own = blob_url(storage, container, SOURCE, grant)
    assert httpx.get(own).content == b"the source"
    assert httpx.get(blob_url(storage, container, OTHER, grant)).status_code == 403
    assert put(own, b"overwritten").status_code == 403
    assert put(blob_url(storage, container, "inbox/new.png", grant), b"x").status_code == 403
    assert httpx.delete(own).status_code == 403
    listing = f"{container.url}?restype=container&comp=list&{token}"
    assert httpx.get(listing).status_code == 403
    assert container.get_blob_client(SOURCE).download_blob().readall() == b"the source"


def test_a_presigned_read_is_the_same_sas_as_a_plain_url(storage: AzureBlobStorage,
                                                          container: ContainerClient) -> None:
    grant = storage.grant_read(ObjectRef("azure_blob", location(container), SOURCE), 300)
    assert grant.kind == "presigned_url" and grant.url is not None
    assert " " not in grant.url and "/inbox/photos/a%20b%2B%C3%BC.png?" in grant.url
    assert httpx.get(grant.url).content == b"the source"


def test_the_write_grant_creates_its_one_blob_once_and_can_do_nothing_else(
        storage: AzureBlobStorage, container: ContainerClient) -> None:
    grant = storage.grant_write(OutputTarget("azure_blob", location(container), OUTPUT), 600)
    assert grant.kind == "sas" and "sp=c&" in grant.secret["sas_token"]
    own = blob_url(storage, container, OUTPUT, grant)
    assert put(own, b"%PDF converted", **{"x-ms-meta-convbridge_output": "r"}).status_code == 201
    # Azurite checks every one of these against the SAS alone
    assert put(own, b"%PDF replaced").status_code == 403
    assert httpx.get(own).status_code == 403
    assert httpx.delete(own).status_code == 403
    assert put(blob_url(storage, container, SOURCE, grant), b"clobbered").status_code == 403
    assert httpx.get(blob_url(storage, container, SOURCE, grant)).status_code == 403
    assert put(blob_url(storage, container, "outbox/elsewhere.pdf", grant), b"x").status_code == (
        403)
    listing = f"{container.url}?restype=container&comp=list&{grant.secret['sas_token']}"
    assert httpx.get(listing).status_code == 403
    assert container.get_blob_client(OUTPUT).download_blob().readall() == b"%PDF converted"
    assert container.get_blob_client(SOURCE).download_blob().readall() == b"the source"


def test_a_create_only_grant_cannot_stage_blocks_on_azurite(
        storage: AzureBlobStorage, container: ContainerClient) -> None:
    # Azurite wants "w" for Put Block: a provider that uploads in blocks fails here. Recorded
    # so a change in Azurite (or a switch to "cw") is noticed.
    grant = storage.grant_write(OutputTarget("azure_blob", location(container), OUTPUT), 600)
    block = blob_url(storage, container, OUTPUT, grant) + "&comp=block&blockid=QUFBQQ%3D%3D"
    assert httpx.put(block, content=b"part").status_code == 403


def test_no_write_grant_is_minted_for_an_output_that_exists(
        storage: AzureBlobStorage, container: ContainerClient) -> None:
    with pytest.raises(GrantError, match="create-only SAS cannot replace it"):
        storage.grant_write(OutputTarget("azure_blob", location(container), SOURCE), 600)


def test_grants_expire(storage: AzureBlobStorage, container: ContainerClient) -> None:
    grant = storage.grant_read(ObjectRef("azure_blob", location(container), SOURCE), 1,
                               kind="sas")
    time.sleep(2.2)  # SAS expiry has one-second resolution
    assert httpx.get(blob_url(storage, container, SOURCE, grant)).status_code == 403


def test_grants_are_https_only_unless_a_dev_setting_allows_http(
        azurite: AzuriteServer, container: ContainerClient) -> None:
    # signing needs no network: an https endpoint for the same account gives a token that
    # Azurite, reached over http, must refuse
    strict = AzureBlobStorage(account_name=ACCOUNT_NAME, account_key=lambda: ACCOUNT_KEY,
                              endpoint="https://127.0.0.1:1/devstoreaccount1")
    grant = strict.grant_read(ObjectRef("azure_blob", location(container), SOURCE), 300,
                              kind="sas")
    assert "spr=https&" in grant.secret["sas_token"]
    url = (f"{azurite.endpoint_url}/{container.container_name}/{quote(SOURCE)}?"
           f"{grant.secret['sas_token']}")
    answer = httpx.get(url)
    assert answer.status_code == 403
    assert answer.headers.get("x-ms-error-code") == "AuthorizationProtocolMismatch"
    with pytest.raises(ConfigError, match="CONVBRIDGE_AZURE_ALLOW_HTTP"):
        AzureBlobStorage(account_name=ACCOUNT_NAME, account_key=lambda: ACCOUNT_KEY,
                         endpoint=azurite.endpoint_url)


def test_a_grant_for_another_account_or_kind_is_refused(storage: AzureBlobStorage) -> None:
    with pytest.raises(StorageError, match="outside account devstoreaccount1"):
        storage.grant_read(ObjectRef("azure_blob", "someoneelse/box", SOURCE), 300, kind="sas")
    with pytest.raises(GrantError, match="sts_session"):
        storage.grant_read(ObjectRef("azure_blob", f"{ACCOUNT_NAME}/box", SOURCE), 300,
                           kind="sts_session")
    grant = storage.grant_read(ObjectRef("azure_blob", f"{ACCOUNT_NAME}/box", SOURCE), 300,
                               kind="sas")
    assert grant.secret["sas_token"] not in repr(grant)  # logging a grant shows no credential


# The fixtures are a client and a fresh container, both fine to share across examples: each
# example removes the blobs it wrote.
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pair=grantable_pairs)
def test_sampled_write_grants_cannot_reach_another_sources_outputs(
        storage: AzureBlobStorage, container: ContainerClient, pair: tuple[str, str]) -> None:
    """15 generated pairs of sources under one rule: the create-only SAS for the first one's
    output creates it, and cannot create the second one's output or anything in its folder."""
    first, second = pair
    own, other = RULE.output_key(first), RULE.output_key(second)
    grant = storage.grant_write(OutputTarget("azure_blob", location(container), own), 600)
    try:
        assert put(blob_url(storage, container, own, grant), b"%PDF").status_code == 201
        for key in (other, f"{RULE.output_folder(second)}page-1.png"):
            assert put(blob_url(storage, container, key, grant), b"x").status_code == 403, key
        assert [blob.name for blob in container.list_blobs(name_starts_with="outbox/")] == [own]
    finally:
        for name in list(container.list_blob_names(name_starts_with="outbox/")):
            container.delete_blob(name)
