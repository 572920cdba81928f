"""Reading secrets: a failure names the secret and what went wrong, never more of AWS's answer."""

from __future__ import annotations

from typing import Any

import botocore.exceptions
import pytest

from convbridge.errors import SecretError
from convbridge.secrets import SecretStore


class RefusingSecretsManager:
    def get_secret_value(self, SecretId: str) -> dict[str, Any]:  # noqa: N803 - boto3's name
        raise botocore.exceptions.ClientError(
            {"Error": {"Code": "AccessDeniedException",
                       "Message": "User: arn:aws:sts::123456789012:assumed-role/bridge is not "
                                  f"authorized to perform GetSecretValue on {SecretId}"}},
            "GetSecretValue")


class UnreachableSecretsManager:
    def get_secret_value(self, SecretId: str) -> dict[str, Any]:  # noqa: N803 - boto3's name
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="https://secretsmanager")


class BinarySecretsManager:
    def get_secret_value(self, SecretId: str) -> dict[str, Any]:  # noqa: N803 - boto3's name
        return {"Name": SecretId, "SecretBinary": b"\x00\x01"}


def test_a_refusal_is_named_by_its_type_only() -> None:
    with pytest.raises(SecretError) as caught:
        SecretStore(RefusingSecretsManager()).get("prod/cloudconvert")
    assert str(caught.value) == "cannot read secret prod/cloudconvert: ClientError"
    assert isinstance(caught.value.__cause__, botocore.exceptions.ClientError)


def test_an_unreachable_service_is_named_by_its_type_only() -> None:
    with pytest.raises(SecretError) as caught:
        SecretStore(UnreachableSecretsManager()).get("prod/cloudconvert")
    assert str(caught.value) == "cannot read secret prod/cloudconvert: EndpointConnectionError"


def test_a_binary_secret_has_no_fields() -> None:
    with pytest.raises(SecretError, match="secret prod/key has no SecretString"):
        SecretStore(BinarySecretsManager()).get("prod/key")
