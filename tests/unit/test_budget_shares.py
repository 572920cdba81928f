"""A provider account's limits split between the S3 trigger's environments: the configured
limits are the account's, each environment that may run at once takes an equal share, and the
shares never add up to more than the account allows (except for the one job every environment
keeps, which check-rules warns about)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from convbridge.budget import ProviderLimits, environment_share, oversubscribed
from convbridge.errors import ConfigError
from convbridge.settings import Settings

ENV = {"CONVBRIDGE_RULES": "r.yaml", "CONVBRIDGE_CONTEXT_SECRET": "c",
       "CONVBRIDGE_IDEMPOTENCY_TABLE": "t"}


@given(jobs=st.integers(1, 10_000), rate=st.floats(0.1, 10_000),
       environments=st.integers(1, 1000))
def test_shares_stay_within_the_account_and_keep_one_job_each(
        jobs: int, rate: float, environments: int) -> None:
    account = ProviderLimits(jobs, rate)
    share = environment_share(account, environments)
    assert share.max_concurrent_jobs >= 1
    assert share.requests_per_second > 0
    assert share.requests_per_second * environments <= rate
    if oversubscribed(account, environments):
        assert share.max_concurrent_jobs == 1 and environments > jobs
    else:
        assert share.max_concurrent_jobs * environments <= jobs
        # rounded down, but by less than one job per environment
        assert (share.max_concurrent_jobs + 1) * environments > jobs


def test_one_environment_takes_the_whole_account() -> None:
    assert environment_share(ProviderLimits(5, 10.0), 1) == ProviderLimits(5, 10.0)


def test_a_share_of_no_environments_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        environment_share(ProviderLimits(5, 10.0), 0)


def test_the_trigger_concurrency_splits_the_configured_account_limits() -> None:
    settings = Settings.from_env({**ENV, "CONVBRIDGE_TRIGGER_CONCURRENCY": "4",
                                  "CONVBRIDGE_CLOUDCONVERT_MAX_CONCURRENT_JOBS": "25",
                                  "CONVBRIDGE_CLOUDCONVERT_REQUESTS_PER_SECOND": "10"})
    assert settings.account_limits("cloudconvert") == ProviderLimits(25, 10.0)
    # 4 x 6 = 24 of 25 jobs, 4 x 2.5 = 10 requests per second
    assert settings.provider_limits("cloudconvert") == ProviderLimits(6, 2.5)
    # the adapter's defaults are account limits too: FreeConvert 5 jobs, 5 requests/s
    assert settings.provider_limits("freeconvert") == ProviderLimits(1, 1.25)


def test_without_a_trigger_concurrency_one_environment_takes_all() -> None:
    settings = Settings.from_env(ENV)
    assert settings.trigger_concurrency == 1
    assert settings.provider_limits("cloudconvert") == settings.account_limits("cloudconvert")


@pytest.mark.parametrize("value", ["0", "1001", "many"])
def test_an_unusable_trigger_concurrency_is_reported_at_cold_start(value: str) -> None:
    with pytest.raises(ConfigError, match="CONVBRIDGE_TRIGGER_CONCURRENCY"):
        Settings.from_env({**ENV, "CONVBRIDGE_TRIGGER_CONCURRENCY": value})
