"""Keyless GCS read grants: V4 signed URLs whose signature comes from IAM Credentials
``signBlob``, authorised by a token google-auth gets through Workload Identity Federation from
the function's AWS credentials. No service-account key is held by the bridge.

Stand-ins, plainly: Google STS, IAM Credentials ``generateAccessToken`` and ``signBlob`` are
:class:`devstack.servers_gcs.LocalGoogleFederation`, a loopback server holding a test RSA key.
The AWS side is real google-auth code signing a ``GetCallerIdentity`` request with throwaway
AWS credentials from the environment; nobody checks that AWS signature (Google would, with AWS).
Objects are served by fake-gcs-server, which does not check V4 signatures, so the signature is
verified by recomputation with the test key's public half, as in test_gcs_flow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import httpx
import pytest

from convbridge.errors import ConfigError, GrantError
from convbridge.model import ObjectRef
from convbridge.secrets import SecretStore, SecretValue
from convbridge.storage.gcs import GcsStorage, storage_client
from convbridge.storage.gcs_identity import FederatedSigning, GcsIdentity, gcs_identity
from devstack.harness.gcs import service_account_key
from devstack.servers_gcs import FakeGcsServer, LocalGoogleFederation
from tests.grant_failures import GrantingMemoryStorage, failure_report_of_a_submit
from tests.integration.conftest import running
from tests.integration.test_gcs_flow import signature_holds, string_to_sign

SERVICE_ACCOUNT = "convbridge-signer@convbridge-local.iam.gserviceaccount.com"
SECRET = "convbridge/gcs-federation"
KEY = "inbox/scans/résumé 2024.png"


@pytest.fixture(scope="module")
def gcs_server() -> Iterator[FakeGcsServer]:
    yield from running(FakeGcsServer())


@pytest.fixture
def federation(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalGoogleFederation]:
    # the Lambda role's credentials, as Lambda puts them in the environment
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIAEXAMPLEEXAMPLE00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "lambda-session-token")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    server = LocalGoogleFederation(SERVICE_ACCOUNT).start()
    try:
        yield server
    finally:
        server.stop()


class _SecretsManager:
    def __init__(self, value: dict[str, Any]) -> None:
        self._value = value

    def get_secret_value(self, SecretId: str) -> dict[str, str]:  # noqa: N803 (boto3's name)
        return {"SecretString": json.dumps(self._value)}


def secret(value: dict[str, Any]) -> SecretValue:
    """The secret as the bridge reads it from Secrets Manager (nested objects included)."""
    return SecretStore(_SecretsManager(value)).get(SECRET)


def federated_secret(federation: LocalGoogleFederation, **extra: Any) -> SecretValue:
    return secret({**extra, **federation.external_account(),
                   "service_account_email": SERVICE_ACCOUNT})


def identity(federation: LocalGoogleFederation, **extra: Any) -> GcsIdentity:
    return gcs_identity(SECRET, federated_secret(federation, **extra),
                        iam_credentials_url=federation.url)


def test_the_read_url_is_signed_by_signblob_and_covers_one_get(
        federation: LocalGoogleFederation, gcs_server: FakeGcsServer) -> None:
    found = identity(federation)
    assert found.identity == "federated"
    client = storage_client(found.client_credentials, gcs_server.endpoint_url,
                            project="convbridge-local")
    bucket = client.create_bucket("keyless-reads")
    gcs = GcsStorage(client=client, signer=found.signer)
    generation = gcs.put_bytes(bucket.name, KEY, b"the scan", content_type="image/png",
                               metadata={})
    grant = gcs.grant_read(ObjectRef("gcs", bucket.name, KEY, generation), 600)
    url = grant.url or ""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))

    assert query["X-Goog-Credential"].startswith(f"{SERVICE_ACCOUNT}/")
    assert query["generation"] == generation
    # signBlob was asked to sign exactly the V4 string-to-sign of this GET, and nothing else
    assert federation.signed == [string_to_sign("GET", parts.path, parts.netloc, query)]
    public = federation.private_key.public_key()
    assert signature_holds(public, url)
    for method in ("PUT", "DELETE"):
        assert not signature_holds(public, url, method=method)
    assert not signature_holds(public, url, path=f"/{bucket.name}/inbox/other.png")
    assert not signature_holds(public, url, generation=str(int(generation) + 1))
    # fake-gcs-server serves it (without checking the signature)
    assert httpx.get(url).content == b"the scan"


def test_the_token_comes_from_the_aws_identity_through_sts_and_impersonation(
        federation: LocalGoogleFederation) -> None:
    signer = identity(federation).signer
    assert isinstance(signer, FederatedSigning)
    signer.sign_bytes(b"anything")
    signer.sign_bytes(b"again")
    # one exchange: the token is reused while it is valid
    (form,) = federation.exchanges
    assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert form["subject_token_type"] == "urn:ietf:params:aws:token-type:aws4_request"
    assert form["audience"].endswith("/workloadIdentityPools/convbridge/providers/aws")
    subject = json.loads(unquote(form["subject_token"]))
    assert subject["url"].startswith("https://sts.us-east-1.amazonaws.com?Action=GetCallerIdentity")
    headers = {h["key"].lower(): h["value"] for h in subject["headers"]}
    assert headers["authorization"].startswith(
        "AWS4-HMAC-SHA256 Credential=ASIAEXAMPLEEXAMPLE00/")
    assert headers["x-amz-security-token"] == "lambda-session-token"
    assert headers["x-goog-cloud-target-resource"] == form["audience"]
    assert len(federation.impersonations) == 1


def test_relayed_writes_are_authorised_by_the_federated_token(
        federation: LocalGoogleFederation) -> None:
    """Against Google (https) the GCS client carries the federated credentials; the emulator
    (http) gets none, so this is checked on the client rather than on the wire."""
    found = identity(federation)
    client = storage_client(found.client_credentials, "https://storage.example.test",
                            project="p")
    assert client._credentials is found.client_credentials
    assert found.signer.credentials is found.client_credentials


def test_a_json_key_in_the_secret_signs_only_when_opted_in(
        federation: LocalGoogleFederation) -> None:
    key = service_account_key()
    assert identity(federation, **key).identity == "federated"
    opted = gcs_identity(SECRET, secret({**key, "signing": "json_key"}))
    assert opted.identity == "json_key" and opted.signer.signer_email == key["client_email"]
    with pytest.raises(ConfigError, match="external_account.*json_key"):
        gcs_identity(SECRET, secret(key))
    with pytest.raises(ConfigError, match="service_account_email"):
        gcs_identity(SECRET, secret(federation.external_account()))
    with pytest.raises(ConfigError, match="federated"):
        gcs_identity(SECRET, secret({**federation.external_account(), "signing": "hmac"}))


FAILURES = {
    "sts-refuses": ("sts_status", 400, "token exchange.*invalid_grant"),
    "impersonation-403": ("impersonation_status", 403, "token exchange.*PERMISSION_DENIED"),
    "expired-token": ("token_lifetime", -60, "expired"),
    "signblob-403": ("sign_status", 403, "refused to sign.*HTTP 403 PERMISSION_DENIED"),
}


@pytest.mark.parametrize("knob,value,message", FAILURES.values(), ids=FAILURES.keys())
def test_a_failed_exchange_is_a_grant_error_never_a_key_signature(
        federation: LocalGoogleFederation, knob: str, value: int, message: str) -> None:
    setattr(federation, knob, value)
    # a JSON key in the secret too: it must not be used as a fallback
    found = identity(federation, **service_account_key())
    gcs = GcsStorage(client=storage_client(found.client_credentials, "http://127.0.0.1:1"),
                     signer=found.signer)
    with pytest.raises(GrantError, match=message) as caught:
        gcs.grant_read(ObjectRef("gcs", "bucket", KEY, "1"), 600)
    assert "federated-" not in str(caught.value) and "access-" not in str(caught.value)
    assert federation.signed == []


@pytest.mark.parametrize("knob,value,message", FAILURES.values(), ids=FAILURES.keys())
def test_a_failed_exchange_ends_in_a_failure_report(
        federation: LocalGoogleFederation, knob: str, value: int, message: str) -> None:
    setattr(federation, knob, value)
    found = identity(federation, **service_account_key())
    gcs = GcsStorage(client=storage_client(found.client_credentials, "http://127.0.0.1:1"),
                     signer=found.signer)
    report = failure_report_of_a_submit(GrantingMemoryStorage(
        lambda ref, ttl, kind: gcs.grant_read(ref, ttl, kind=kind)))
    assert SERVICE_ACCOUNT in report["error"]["message"]
    assert federation.signed == []
