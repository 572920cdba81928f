"""User-delegation SAS grants, end to end against Azurite over HTTPS with ``--oauth basic``: the
bridge asks AWS STS for a web identity token (a botocore Stubber at that edge, answering with a
JWT from :class:`devstack.servers_azure.LocalAwsWebIdentityIssuer`), trades it at
:class:`devstack.servers_azure.LocalEntra` (a loopback Entra token endpoint that verifies the
assertion against the app's federated credential) for a bearer token Azurite accepts, gets a
user delegation key from Azurite and signs its grants with it. Requests carry only the SAS, as a
provider would send them; Azurite decides.

Azurite enforces a user-delegation SAS's signature (it derives the key value from the key's
fields), permissions, resource scope and the key's expiry. It does not implement Revoke User
Delegation Keys, so revocation is proven by recomputing the signature: the SAS is the HMAC of the
SDK's string-to-sign under the delegation key's value and nothing else, and names that key
(``skoid``, ``skt``, ``ske``), which is what the service revokes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import azure.storage.blob._shared_access_signature as sdk_sas
import boto3
import httpx
import pytest
from azure.core.credentials import AccessToken
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContainerClient,
    generate_blob_sas,
)
from botocore.stub import Stubber

from convbridge.model import ObjectRef, OutputTarget
from convbridge.storage.azure_blob import AzureBlobStorage
from convbridge.storage.azure_identity import (
    EntraTokenSource,
    StsWebIdentityAssertion,
    UserDelegationSigning,
)
from devstack.servers_azure import (
    ACCOUNT_NAME,
    AzuriteOAuthServer,
    LocalAwsWebIdentityIssuer,
    LocalEntra,
    azurite_bearer_token,
)

SOURCE = "inbox/photos/a b.png"
OTHER = "inbox/photos/other.png"
OUTPUT = "outbox/photos/a b.png.pdf"
TENANT = "00000000-0000-0000-0000-000000000001"
CLIENT = "11111111-1111-1111-1111-111111111111"


class Bearer:
    """A token credential for the test's own setup calls."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(azurite_bearer_token(), int(time.time()) + 3600)


@pytest.fixture
def service(azurite_oauth: AzuriteOAuthServer) -> BlobServiceClient:
    return BlobServiceClient(azurite_oauth.endpoint_url, credential=Bearer(),
                             connection_verify=azurite_oauth.ca_path)


@pytest.fixture
def container(service: BlobServiceClient) -> ContainerClient:
    client = service.create_container(f"u-{uuid.uuid4().hex[:12]}")
    client.upload_blob(SOURCE, b"the source")
    client.upload_blob(OTHER, b"another blob")
    return client


AWS = LocalAwsWebIdentityIssuer()
ROLE = "arn:aws:iam::123456789012:role/convbridge-WebhookFunctionRole"
#: what STS GetWebIdentityToken answers for the function's role
AWS_TOKEN = AWS.token(ROLE, lifetime_seconds=3600)


@pytest.fixture
def entra() -> Iterator[LocalEntra]:
    """Entra's token endpoint for an app trusting the function's role."""
    server = LocalEntra(TENANT).start()
    server.register_federated(CLIENT, AWS.credential(ROLE))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def exchanges(entra: LocalEntra) -> list[dict[str, str]]:
    """The token requests Entra received."""
    return entra.requests


@pytest.fixture
def storage(azurite_oauth: AzuriteOAuthServer, entra: LocalEntra) -> Iterator[AzureBlobStorage]:
    sts = boto3.client("sts", region_name="us-east-1", aws_access_key_id="x",
                       aws_secret_access_key="x")
    with Stubber(sts) as stub:
        for _ in range(3):
            stub.add_response("get_web_identity_token", {
                "WebIdentityToken": AWS_TOKEN, "Expiration": datetime.now(UTC)})
        tokens = EntraTokenSource(tenant_id=TENANT, client_id=CLIENT,
                                  assertion=StsWebIdentityAssertion(sts),
                                  authority=entra.authority, http=httpx.Client())
        yield AzureBlobStorage(account_name=ACCOUNT_NAME,
                               signing=UserDelegationSigning(tokens=tokens),
                               endpoint=azurite_oauth.endpoint_url,
                               connection_verify=azurite_oauth.ca_path)


def https(azurite_oauth: AzuriteOAuthServer) -> httpx.Client:
    """A client as a provider's: trusting Azurite's certificate, holding no credential."""
    return httpx.Client(verify=ssl.create_default_context(cafile=azurite_oauth.ca_path))


def location(container: ContainerClient) -> str:
    return f"{ACCOUNT_NAME}/{container.container_name}"


def url(storage: AzureBlobStorage, container: ContainerClient, key: str, token: str) -> str:
    return f"{storage.blob_url(location(container), key)}?{token}"


def test_the_read_grant_is_a_delegation_sas_reading_its_blob_only(
        storage: AzureBlobStorage, container: ContainerClient, azurite_oauth: AzuriteOAuthServer,
        exchanges: list[dict[str, str]]) -> None:
    grant = storage.grant_read(ObjectRef("azure_blob", location(container), SOURCE), 300,
                               kind="sas")
    token = grant.secret["sas_token"]
    fields = parse_qs(token)
    assert fields["sp"] == ["r"] and fields["sr"] == ["b"] and fields["spr"] == ["https"]
    assert fields["sktid"] == [TENANT] and "skoid" in fields and "user delegation" in grant.scope
    # the Entra exchange carried the STS token as a federated client assertion
    assert exchanges[0]["client_assertion"] == AWS_TOKEN
    assert exchanges[0]["client_id"] == CLIENT
    assert exchanges[0]["scope"] == "https://storage.azure.com/.default"
    get = https(azurite_oauth)
    assert get.get(url(storage, container, SOURCE, token)).content == b"the source"
    assert get.get(url(storage, container, OTHER, token)).status_code == 403
    assert get.put(url(storage, container, SOURCE, token), content=b"x",
                   headers={"x-ms-blob-type": "BlockBlob"}).status_code == 403
    assert get.delete(url(storage, container, SOURCE, token)).status_code == 403


def test_the_write_grant_creates_its_blob_once_and_cannot_overwrite(
        storage: AzureBlobStorage, container: ContainerClient,
        azurite_oauth: AzuriteOAuthServer) -> None:
    grant = storage.grant_write(OutputTarget("azure_blob", location(container), OUTPUT), 900)
    token = grant.secret["sas_token"]
    assert parse_qs(token)["sp"] == ["c"]
    put = https(azurite_oauth)
    target = url(storage, container, OUTPUT, token)
    headers = {"x-ms-blob-type": "BlockBlob"}
    assert put.put(target, content=b"%PDF", headers=headers).status_code == 201
    assert put.put(target, content=b"again", headers=headers).status_code in {403, 409}
    assert put.get(target).status_code == 403
    assert put.put(url(storage, container, SOURCE, token), content=b"x",
                   headers=headers).status_code == 403
    assert container.get_blob_client(OUTPUT).download_blob().readall() == b"%PDF"


def test_one_delegation_key_signs_grants_until_it_would_not_outlive_them(
        storage: AzureBlobStorage, container: ContainerClient,
        exchanges: list[dict[str, str]]) -> None:
    ref = ObjectRef("azure_blob", location(container), SOURCE)
    first = parse_qs(storage.grant_read(ref, 300, kind="sas").secret["sas_token"])
    second = parse_qs(storage.grant_read(ref, 600, kind="sas").secret["sas_token"])
    assert first["ske"] == second["ske"] and len(exchanges) == 1
    # a grant outliving the cached key gets a new key that covers it
    long = parse_qs(storage.grant_read(ref, 6 * 3600, kind="sas").secret["sas_token"])
    assert long["ske"] != first["ske"] and long["ske"][0] >= long["se"][0]


def test_a_sas_whose_delegation_key_expired_is_refused(
        service: BlobServiceClient, container: ContainerClient,
        azurite_oauth: AzuriteOAuthServer) -> None:
    now = datetime.now(UTC)
    key = service.get_user_delegation_key(now - timedelta(minutes=1), now + timedelta(seconds=2))
    token = generate_blob_sas(ACCOUNT_NAME, container.container_name, SOURCE,
                              user_delegation_key=key, permission=BlobSasPermissions(read=True),
                              expiry=now + timedelta(minutes=10), protocol="https")
    blob = f"{container.url}/{SOURCE.replace(' ', '%20')}?{token}"
    client = https(azurite_oauth)
    assert client.get(blob).content == b"the source"
    time.sleep(3)
    assert client.get(blob).status_code == 403


def test_the_signature_is_the_delegation_key_s_hmac_of_the_string_to_sign(
        storage: AzureBlobStorage, container: ContainerClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Revocation is not emulated: this shows the SAS rests on the delegation key alone, so a
    revoked key voids it at the service."""
    signed: list[tuple[str, str]] = []
    real_sign = sdk_sas.sign_string

    def recording(key: str, string_to_sign: str, *args: Any, **kwargs: Any) -> str:
        signed.append((key, string_to_sign))
        return str(real_sign(key, string_to_sign, *args, **kwargs))

    monkeypatch.setattr(sdk_sas, "sign_string", recording)
    grant = storage.grant_read(ObjectRef("azure_blob", location(container), SOURCE), 300,
                               kind="sas")
    fields = parse_qs(grant.secret["sas_token"])
    (key_value, string_to_sign), = signed
    expected = base64.b64encode(hmac.new(base64.b64decode(key_value), string_to_sign.encode(),
                                         hashlib.sha256).digest()).decode()
    assert fields["sig"] == [expected]
    assert f"/blob/{ACCOUNT_NAME}/{container.container_name}/{SOURCE}" in string_to_sign
    for name in ("skoid", "sktid", "skt", "ske"):
        assert fields[name][0] in string_to_sign
