"""Environment validation and secret handling."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from convbridge.errors import ConfigError, SecretError
from convbridge.secrets import SecretStore
from convbridge.settings import Settings

BASE = {"CONVBRIDGE_RULES": "/opt/rules.yaml", "CONVBRIDGE_CONTEXT_SECRET": "arn:ctx",
        "CONVBRIDGE_IDEMPOTENCY_TABLE": "claims"}


def test_minimal_environment_gets_defaults() -> None:
    settings = Settings.from_env({**BASE, "CONVBRIDGE_SECRET_CLOUDCONVERT": "arn:cc"})
    assert settings.read_grant_seconds == 900
    assert settings.write_grant_seconds == 3600
    assert settings.base_url("cloudconvert") == "https://api.cloudconvert.com/v2"
    assert settings.provider_secret_name("cloudconvert") == "arn:cc"


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"CONVBRIDGE_READ_GRANT_SECONDS": "soon",
                           "CONVBRIDGE_WRITE_GRANT_SECONDS": "7200",
                           "CONVBRIDGE_WEBHOOK_URL": "ftp://x"})
    message = str(caught.value)
    for expected in ("CONVBRIDGE_RULES is not set", "CONVBRIDGE_CONTEXT_SECRET is not set",
                     "CONVBRIDGE_IDEMPOTENCY_TABLE is not set",
                     "READ_GRANT_SECONDS='soon'", "WRITE_GRANT_SECONDS=7200 is outside",
                     "WEBHOOK_URL='ftp://x'"):
        assert expected in message


def test_missing_provider_secret_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="CONVBRIDGE_SECRET_CLOUDCONVERT"):
        Settings.from_env(BASE).provider_secret_name("cloudconvert")


BY_PREFIX = {"CONVBRIDGE_PROVIDER_SECRETS_PREFIX": "convbridge/providers/"}


def test_provider_secret_is_named_by_the_prefix_when_not_set_on_its_own() -> None:
    # The deployed stacks set one prefix; a provider added to the registry needs no new setting.
    settings = Settings.from_env({**BASE, **BY_PREFIX})
    assert settings.provider_secret_name("cloudconvert") == "convbridge/providers/cloudconvert"
    assert settings.provider_secret_name("cloudconvert_v1") == (
        "convbridge/providers/cloudconvert_v1")


def test_provider_secret_set_on_its_own_wins_over_the_prefix() -> None:
    settings = Settings.from_env({**BASE, **BY_PREFIX, "CONVBRIDGE_SECRET_FREECONVERT": "arn:fc"})
    assert settings.provider_secret_name("freeconvert") == "arn:fc"
    assert settings.provider_secret_name("onlineconvert") == "convbridge/providers/onlineconvert"


def test_missing_provider_secret_names_both_settings() -> None:
    with pytest.raises(ConfigError, match="CONVBRIDGE_PROVIDER_SECRETS_PREFIX"):
        Settings.from_env({**BASE, "CONVBRIDGE_SECRET_FREECONVERT": " "}).provider_secret_name(
            "freeconvert")


class FakeSecretsManager:
    def __init__(self, value: str) -> None:
        self.value = value
        self.calls = 0

    def get_secret_value(self, SecretId: str) -> dict[str, str]:  # noqa: N803 (boto3 name)
        self.calls += 1
        return {"SecretString": self.value}


def test_secret_values_are_cached_and_never_shown() -> None:
    client = FakeSecretsManager('{"api_key": "sk-live-123", "signing_secret": "whsec-9"}')
    store = SecretStore(client)
    value = store.get("convbridge/cloudconvert")
    assert value.field("api_key") == "sk-live-123"
    store.get("convbridge/cloudconvert")
    assert client.calls == 1
    shown = repr(value) + str(value) + f"{value}"
    assert "sk-live-123" not in shown and "whsec-9" not in shown
    with pytest.raises(SecretError, match="no field 'nope'") as caught:
        value.field("nope")
    assert "sk-live-123" not in str(caught.value)


def test_plain_string_secrets_are_one_value() -> None:
    assert SecretStore(FakeSecretsManager("x" * 40)).get("ctx").field("value") == "x" * 40


@pytest.mark.parametrize(("claims", "contexts"), [("3600", "7200"), ("86400", "2592000"),
                                                  (None, "2592000")])
def test_claims_that_expire_before_contexts_fail_the_cold_start(claims: str | None,
                                                               contexts: str) -> None:
    env = {**BASE, "CONVBRIDGE_CONTEXT_MAX_AGE_SECONDS": contexts}
    if claims is not None:
        env["CONVBRIDGE_CLAIM_EXPIRY_SECONDS"] = claims
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert "CONVBRIDGE_CLAIM_EXPIRY_SECONDS" in message
    assert "CONVBRIDGE_CONTEXT_MAX_AGE_SECONDS" in message


def test_claims_may_outlive_contexts_and_the_defaults_agree() -> None:
    defaults = Settings.from_env(BASE)
    assert defaults.claim_expiry_seconds >= defaults.context_max_age_seconds
    settings = Settings.from_env({**BASE, "CONVBRIDGE_CLAIM_EXPIRY_SECONDS": "3600",
                                  "CONVBRIDGE_CONTEXT_MAX_AGE_SECONDS": "3600"})
    assert settings.claim_expiry_seconds == settings.context_max_age_seconds == 3600


@pytest.mark.parametrize("deployment", ["template.yaml", "infra/cdk/convbridge_cdk/construct.py"])
def test_deployments_keep_claims_alive_as_long_as_contexts(deployment: str) -> None:
    """Either file may set the two variables; whatever it sets (or leaves to the defaults)
    must pass the cold-start check."""
    text = (Path(__file__).resolve().parents[2] / deployment).read_text(encoding="utf-8")

    def seconds(name: str) -> str | None:
        found = re.findall(rf"CONVBRIDGE_{name}[\"']?\s*[:=]\s*[\"']?(\d+)", text)
        assert len(set(found)) <= 1, f"{deployment} sets CONVBRIDGE_{name} to {found}"
        return found[0] if found else None

    env = dict(BASE)
    for name in ("CLAIM_EXPIRY_SECONDS", "CONTEXT_MAX_AGE_SECONDS"):
        value = seconds(name)
        if value is not None:
            env[f"CONVBRIDGE_{name}"] = value
    settings = Settings.from_env(env)
    assert settings.claim_expiry_seconds >= settings.context_max_age_seconds
