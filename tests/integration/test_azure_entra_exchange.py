"""The Entra ID token exchange behind user-delegation SAS grants, over HTTP, with both client
assertions: the default (an AWS STS web identity token, by workload identity federation) and
the opt-in for accounts that cannot federate (a JWT the bridge signs with the app's client
certificate from the account's secret).

Stand-ins, plainly: Entra ID is :class:`devstack.servers_azure.LocalEntra`, a loopback token
endpoint that verifies each assertion's signature against the registered certificate or the
federated issuer's key, its audience, issuer, subject and validity window, and hands out a
token Azurite's ``--oauth basic`` accepts. AWS STS ``GetWebIdentityToken`` is a botocore Stubber
answering with a JWT from :class:`devstack.servers_azure.LocalAwsWebIdentityIssuer`, a test key
standing for AWS's outbound issuer. Azurite (HTTPS,
OAuth) serves the delegation key and decides whether each SAS reads.

Every failed exchange (a wrong or expired certificate, an expired assertion, Entra refusing,
STS refusing, an expired token) is a GrantError naming the step and, in the pipeline, a
GRANT_FAILED failure report: never a crash, never a grant signed with the account key that
the same secret holds.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import boto3
import httpx
import pytest
from azure.storage.blob import BlobServiceClient, ContainerClient
from botocore.stub import Stubber

from convbridge.errors import GrantError
from convbridge.model import Grant, GrantKind, ObjectRef
from convbridge.secrets import SecretValue
from convbridge.storage.azure_blob import AzureBlobStorage
from convbridge.storage.azure_identity import (
    CertificateAssertion,
    ClientCertificate,
    EntraTokenSource,
    UserDelegationSigning,
    credential_source,
)
from devstack.servers_azure import (
    ACCOUNT_KEY,
    ACCOUNT_NAME,
    AzuriteOAuthServer,
    LocalAwsWebIdentityIssuer,
    LocalEntra,
    app_certificate,
)
from tests.grant_failures import GrantingMemoryStorage, failure_report_of_a_submit
from tests.integration.test_azure_user_delegation import Bearer, https, location, url

TENANT = "00000000-0000-0000-0000-000000000002"
CLIENT = "22222222-2222-2222-2222-222222222222"
ROLE = "arn:aws:iam::123456789012:role/convbridge-AzureTriggerRole"
SOURCE = "inbox/scans/a b.png"
OTHER = "inbox/scans/other.png"


@pytest.fixture
def container(azurite_oauth: AzuriteOAuthServer) -> ContainerClient:
    service = BlobServiceClient(azurite_oauth.endpoint_url, credential=Bearer(),
                                connection_verify=azurite_oauth.ca_path)
    client = service.create_container(f"e-{uuid.uuid4().hex[:12]}")
    client.upload_blob(SOURCE, b"the scan")
    client.upload_blob(OTHER, b"another blob")
    return client


AWS = LocalAwsWebIdentityIssuer()
CERTIFICATE = app_certificate()


@pytest.fixture
def entra() -> Iterator[LocalEntra]:
    server = LocalEntra(TENANT).start()
    server.register_certificate(CLIENT, CERTIFICATE[0])
    server.register_federated(CLIENT, AWS.credential(ROLE))
    try:
        yield server
    finally:
        server.stop()


def sts(*, subject: str = ROLE, refuse: bool = False) -> Any:
    client = boto3.client("sts", region_name="us-east-1", aws_access_key_id="x",
                          aws_secret_access_key="x")
    stub = Stubber(client)
    if refuse:
        stub.add_client_error("get_web_identity_token", "AccessDenied",
                              "outbound web identity federation is not enabled")
    else:
        stub.add_response("get_web_identity_token", {
            "WebIdentityToken": AWS.token(subject),
            "Expiration": datetime.now(UTC)})
    stub.activate()
    return client


def account_secret(**fields: str) -> Callable[[], SecretValue]:
    """The account's secret as the bridge reads it; the account key is in it every time, to
    show it is never used without ``"signing": "account_key"``."""
    value = {"account_name": ACCOUNT_NAME, "tenant_id": TENANT, "client_id": CLIENT,
             "account_key": ACCOUNT_KEY, **fields}
    return lambda: SecretValue("convbridge/azure-account", value)


def certificate_secret(certificate: tuple[str, str] = CERTIFICATE) -> Callable[[], SecretValue]:
    return account_secret(signing="client_certificate", client_certificate=certificate[0],
                          client_certificate_key=certificate[1])


def storage_for(signing: Any, server: AzuriteOAuthServer) -> AzureBlobStorage:
    return AzureBlobStorage(account_name=ACCOUNT_NAME, signing=signing,
                            endpoint=server.endpoint_url, connection_verify=server.ca_path)


def _claims(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, claims = (json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
                      for part in token.split(".")[:2])
    return header, claims


@pytest.mark.parametrize("credential", ["client_certificate", "workload_identity_federation"])
def test_the_entra_token_gets_a_delegation_key_whose_sas_reads_its_blob_only(
        credential: str, entra: LocalEntra, azurite_oauth: AzuriteOAuthServer,
        container: ContainerClient) -> None:
    secret = certificate_secret() if credential == "client_certificate" else account_secret()
    signing = credential_source(secret, sts_client=sts, authority=entra.authority,
                                http=httpx.Client())
    assert isinstance(signing, UserDelegationSigning)
    assert signing.tokens.credential == credential
    storage = storage_for(signing, azurite_oauth)
    grant = storage.grant_read(ObjectRef("azure_blob", location(container), SOURCE), 300,
                               kind="sas")
    token = grant.secret["sas_token"]
    fields = parse_qs(token)
    assert fields["sktid"] == [TENANT] and fields["sp"] == ["r"] and "skoid" in fields
    assert ("client certificate" in grant.scope) == (credential == "client_certificate")
    client = https(azurite_oauth)
    assert client.get(url(storage, container, SOURCE, token)).content == b"the scan"
    assert client.get(url(storage, container, OTHER, token)).status_code == 403
    (form,) = entra.requests
    header, claims = _claims(form["client_assertion"])
    if credential == "client_certificate":
        assert header["alg"] == "PS256" and "x5t#S256" in header
        assert claims["aud"] == entra.token_url and claims["iss"] == claims["sub"] == CLIENT
    else:
        assert claims["iss"] == AWS.issuer and claims["sub"] == ROLE


def assertion_source(entra: LocalEntra, *, certificate: tuple[str, str] = CERTIFICATE,
                     clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                     audience: str | None = None) -> EntraTokenSource:
    pair = ClientCertificate(*certificate)
    return EntraTokenSource(
        tenant_id=TENANT, client_id=CLIENT, authority=entra.authority, http=httpx.Client(),
        assertion=CertificateAssertion(lambda: pair, client_id=CLIENT,
                                       token_url=audience or entra.token_url, clock=clock),
        credential="client_certificate")


def tampered(entra: LocalEntra) -> EntraTokenSource:
    """An assertion signed by an unregistered certificate's key, its header then rewritten to
    name the registered certificate: only the signature tells them apart."""
    pair = ClientCertificate(*app_certificate())
    registered = _claims(CertificateAssertion(lambda: ClientCertificate(*CERTIFICATE),
                                              client_id=CLIENT, token_url="x")())[0]

    def forged() -> str:
        real = CertificateAssertion(lambda: pair, client_id=CLIENT, token_url=entra.token_url)()
        _, claims, signature = real.split(".")
        header = base64.urlsafe_b64encode(json.dumps(registered).encode()).rstrip(b"=")
        return f"{header.decode()}.{claims}.{signature}"

    return EntraTokenSource(tenant_id=TENANT, client_id=CLIENT, authority=entra.authority,
                            http=httpx.Client(), assertion=forged)


STAND_IN_REFUSES = {
    "tampered-header": (tampered, "AADSTS700027"),
    "wrong-audience": (lambda entra: assertion_source(
        entra, audience="https://login.example/other/oauth2/v2.0/token"), "AADSTS50012"),
    "expired-assertion": (lambda entra: assertion_source(
        entra, clock=lambda: datetime.now(UTC) - timedelta(hours=1)), "AADSTS700024"),
}


@pytest.mark.parametrize("make,code", STAND_IN_REFUSES.values(), ids=STAND_IN_REFUSES.keys())
def test_the_entra_stand_in_checks_signature_audience_and_expiry(
        entra: LocalEntra, make: Callable[[LocalEntra], EntraTokenSource], code: str) -> None:
    with pytest.raises(GrantError, match=f"HTTP 400 invalid_client \\({code}\\)"):
        make(entra).token()


def certificate_failure(certificate: tuple[str, str]) -> Callable[[LocalEntra], Any]:
    return lambda entra: credential_source(certificate_secret(certificate), sts_client=sts,
                                           authority=entra.authority, http=httpx.Client())


def federation_failure(**sts_args: Any) -> Callable[[LocalEntra], Any]:
    return lambda entra: credential_source(account_secret(), sts_client=lambda: sts(**sts_args),
                                           authority=entra.authority, http=httpx.Client())


def expired_token(signing: Callable[[LocalEntra], Any]) -> Callable[[LocalEntra], Any]:
    def make(entra: LocalEntra) -> Any:
        entra.token_lifetime = 0
        return signing(entra)

    return make


def unknown_app(entra: LocalEntra) -> Any:
    return UserDelegationSigning(tokens=EntraTokenSource(
        tenant_id=TENANT, client_id="33333333-3333-3333-3333-333333333333",
        authority=entra.authority, http=httpx.Client(),
        assertion=lambda: "not.even.checked", credential="client_certificate"))


FAILURES = {
    "wrong-certificate": (certificate_failure(app_certificate()),
                          "HTTP 400 invalid_client \\(AADSTS700027\\)"),
    "expired-certificate": (certificate_failure(app_certificate(valid_for=-timedelta(hours=1))),
                            "client certificate of Entra ID app .* expired at"),
    "expired-assertion": (lambda entra: UserDelegationSigning(tokens=assertion_source(
        entra, clock=lambda: datetime.now(UTC) - timedelta(minutes=11))),
        "HTTP 400 invalid_client \\(AADSTS700024\\)"),
    "entra-400-unknown-app": (unknown_app, "HTTP 400 unauthorized_client \\(AADSTS700016\\)"),
    "certificate-expired-token": (expired_token(certificate_failure(CERTIFICATE)),
                                  "expires in 0 s"),
    "sts-refuses": (federation_failure(refuse=True), "STS refused .*AccessDenied"),
    "entra-400-untrusted-role": (federation_failure(subject=ROLE + "-other"),
                                 "HTTP 400 invalid_client \\(AADSTS700213\\)"),
    "federation-expired-token": (expired_token(federation_failure()), "expires in 0 s"),
}

@pytest.mark.parametrize("make,message", FAILURES.values(), ids=FAILURES.keys())
def test_a_failed_exchange_ends_in_a_failure_report_never_an_account_key_grant(
        entra: LocalEntra, azurite_oauth: AzuriteOAuthServer, container: ContainerClient,
        make: Callable[[LocalEntra], Any], message: str) -> None:
    azure = storage_for(make(entra), azurite_oauth)

    def mint(ref: ObjectRef, ttl: int, kind: GrantKind) -> Grant:
        # the same key in an Azurite container
        return azure.grant_read(ObjectRef("azure_blob", location(container), ref.key), ttl,
                                kind=kind)

    with pytest.raises(GrantError, match=message):
        mint(ObjectRef("s3", "bucket", SOURCE), 300, "presigned_url")
    report = failure_report_of_a_submit(GrantingMemoryStorage(mint))
    assert re.search(message, report["error"]["message"])
    assert ACCOUNT_KEY not in json.dumps(report) and "sig=" not in json.dumps(report)
