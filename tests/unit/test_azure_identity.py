"""The Entra ID token exchange behind user-delegation SAS grants fails clearly: STS refusing a
web identity token, Entra answering 400 or handing back an expired token each end in a
GrantError naming the step (never the token), and in the pipeline a failure report, never a
crash and never a grant signed with an account key."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import boto3
import httpx
import pytest
from botocore.stub import Stubber

from convbridge.errors import ConfigError, ConvbridgeError, GrantError
from convbridge.model import Grant, GrantKind, ObjectRef
from convbridge.secrets import SecretValue
from convbridge.storage.azure_identity import (
    EntraTokenSource,
    StsWebIdentityAssertion,
    UserDelegationSigning,
    credential_source,
)
from tests.grant_failures import GrantingMemoryStorage, failure_report_of_a_submit


def entra(status: int, body: dict[str, Any]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(
        lambda request: httpx.Response(status, json=body)))


def tokens(http: httpx.Client, assertion: Callable[[], str] = lambda: "aws.jwt") -> (
        EntraTokenSource):
    return EntraTokenSource(tenant_id="tenant", client_id="app", assertion=assertion,
                            authority="https://login.example", http=http)


def refused_by_sts() -> StsWebIdentityAssertion:
    sts = boto3.client("sts", region_name="us-east-1", aws_access_key_id="x",
                       aws_secret_access_key="x")
    stub = Stubber(sts)
    stub.add_client_error("get_web_identity_token", "AccessDenied", "role may not federate")
    stub.activate()
    return StsWebIdentityAssertion(sts)


def test_entra_answering_400_is_a_grant_error_with_its_code() -> None:
    source = tokens(entra(400, {"error": "invalid_client", "error_codes": [700213],
                                "error_description": "No matching federated identity "
                                                     "record found for presented assertion "
                                                     "subject 'arn:aws:iam::1:role/x'"}))
    with pytest.raises(GrantError) as raised:
        source.token()
    assert "HTTP 400 invalid_client (AADSTS700213)" in str(raised.value)
    assert "arn:aws" not in str(raised.value)


def test_an_expired_token_from_entra_is_refused() -> None:
    source = tokens(entra(200, {"access_token": "t", "expires_in": 0}))
    with pytest.raises(GrantError, match="expires in 0 s"):
        source.token()


def test_sts_refusing_the_web_identity_token_is_a_grant_error() -> None:
    source = tokens(entra(200, {"access_token": "t", "expires_in": 3600}),
                    assertion=refused_by_sts())
    with pytest.raises(GrantError, match="STS refused .*AccessDenied"):
        source.token()


def test_a_token_is_reused_until_shortly_before_it_expires() -> None:
    calls: list[bytes] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.content)
        return httpx.Response(200, json={"access_token": f"t{len(calls)}", "expires_in": 3600})

    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    source = EntraTokenSource(tenant_id="tenant", client_id="app", assertion=lambda: "aws.jwt",
                              http=httpx.Client(transport=httpx.MockTransport(answer)),
                              clock=lambda: now[0])
    assert source.token().token == source.token().token == "t1"
    now[0] = now[0].replace(minute=56)
    assert source.token().token == "t2"
    assert b"client_assertion=aws.jwt" in calls[0]
    assert source.token_url == "https://login.microsoftonline.com/tenant/oauth2/v2.0/token"


def secret(fields: dict[str, str]) -> Callable[[], SecretValue]:
    return lambda: SecretValue("azure-account", fields)


def test_an_account_key_in_the_secret_is_not_used_without_the_opt_in() -> None:
    with pytest.raises(ConfigError, match="lacks tenant_id, client_id.*account_key"):
        credential_source(secret({"account_name": "a", "account_key": "k"}),
                          sts_client=lambda: None)
    found = credential_source(secret({"account_name": "a", "account_key": "k",
                                      "tenant_id": "t", "client_id": "c"}),
                              sts_client=lambda: None)
    assert found.identity == "user_delegation"
    opted = credential_source(secret({"account_name": "a", "signing": "account_key",
                                      "account_key": "k"}), sts_client=lambda: None)
    assert opted.identity == "account_key"


@pytest.mark.parametrize("source", [
    lambda: tokens(entra(400, {"error": "invalid_client"})),
    lambda: tokens(entra(200, {"access_token": "t", "expires_in": 10})),
    lambda: tokens(entra(200, {"access_token": "t", "expires_in": 3600}),
                   assertion=refused_by_sts()),
], ids=["entra-400", "expired-token", "sts-refuses"])
def test_a_failed_exchange_ends_in_a_failure_report(source: Callable[[], EntraTokenSource],
                                                    ) -> None:
    tokens = source()

    def mint(ref: ObjectRef, ttl: int, kind: GrantKind) -> Grant:
        tokens.token()  # what the Azure adapter needs first, to get a delegation key
        raise AssertionError("the exchange was meant to fail")

    report = failure_report_of_a_submit(GrantingMemoryStorage(mint))
    assert "Entra ID" in report["error"]["message"] or "STS" in report["error"]["message"]


def test_the_client_certificate_is_an_explicit_choice_checked_at_start() -> None:
    from devstack.servers_azure import app_certificate

    certificate, key = app_certificate()
    _, other_key = app_certificate()
    ids = {"account_name": "a", "tenant_id": "t", "client_id": "c", "account_key": "k"}
    # a certificate in the secret is not used without the opt-in
    assert credential_source(secret({**ids, "client_certificate": certificate,
                                     "client_certificate_key": key}),
                             sts_client=lambda: None).tokens.credential == (
        "workload_identity_federation")
    opted = credential_source(secret({**ids, "signing": "client_certificate",
                                      "client_certificate": certificate,
                                      "client_certificate_key": key}), sts_client=lambda: None)
    assert isinstance(opted, UserDelegationSigning)
    assert opted.tokens.credential == "client_certificate"
    assert "client certificate" in opted.describes and "account key" in opted.describes
    with pytest.raises(ConfigError, match="not the private key of its client_certificate"):
        credential_source(secret({**ids, "signing": "client_certificate",
                                  "client_certificate": certificate,
                                  "client_certificate_key": other_key}), sts_client=lambda: None)
    with pytest.raises(ConfigError, match="not an unencrypted PEM") as raised:
        credential_source(secret({**ids, "signing": "client_certificate",
                                  "client_certificate": certificate,
                                  "client_certificate_key": "-----BEGIN PRIVATE KEY-----"}),
                          sts_client=lambda: None)
    assert "BEGIN" not in str(raised.value)
    with pytest.raises(ConvbridgeError, match="client_certificate"):
        credential_source(secret({**ids, "signing": "client_certificate"}),
                          sts_client=lambda: None)
    with pytest.raises(ConfigError, match="user_delegation.*client_certificate.*account_key"):
        credential_source(secret({**ids, "signing": "certificate"}), sts_client=lambda: None)
