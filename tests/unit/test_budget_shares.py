"""A provider account's limits split between the S3 trigger's environments: the configured
limits are the account's, each environment that may run at once takes an equal share, and the
shares never add up to more than the account allows (except for the one job every environment
keeps, which check-rules warns about)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from convbridge.budget import (
    ProviderBudget,
    ProviderLimits,
    deferring,
    environment_share,
    oversubscribed,
)
from convbridge.errors import ConfigError, ProviderBusy
from convbridge.http import deadline_from
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


def test_the_s3_trigger_and_the_sftp_claims_queue_share_the_account() -> None:
    # the template writes the sum out (CloudFormation cannot add): 5 + 5 environments at once
    # of either function, each with a tenth of the account
    env = {**ENV, "CONVBRIDGE_TRIGGER_CONCURRENCY": "5+5",
           "CONVBRIDGE_CLOUDCONVERT_MAX_CONCURRENT_JOBS": "20"}
    settings = Settings.from_env(env)
    assert settings.trigger_concurrency == 10
    assert settings.provider_limits("cloudconvert").max_concurrent_jobs == 2


@pytest.mark.parametrize("value", ["0", "1001", "many", "5+", "+5", "5+-1", "999+2", "0+0",
                                   "\u0665"])
def test_an_unusable_trigger_concurrency_is_reported_at_cold_start(value: str) -> None:
    with pytest.raises(ConfigError, match="CONVBRIDGE_TRIGGER_CONCURRENCY"):
        Settings.from_env({**ENV, "CONVBRIDGE_TRIGGER_CONCURRENCY": value})


class _Clock:
    """A clock that moves only when the budget sleeps, or when the test says."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@given(rate=st.integers(1, 20),
       gaps=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=80))
def test_no_window_of_a_second_holds_more_requests_than_the_rate(
        rate: int, gaps: list[float]) -> None:
    # A provider counting its limit over any one second refuses nothing the budget sends,
    # however the requests arrive.
    clock = _Clock()
    budget = ProviderBudget("p", ProviderLimits(5, float(rate)), clock=clock,
                            sleep=clock.sleep, patience_seconds=1e9)
    sent = []
    for gap in gaps:
        clock.now += gap
        budget.pace()
        sent.append(clock.now)
    for index, moment in enumerate(sent):
        assert sum(1 for other in sent[index:] if other < moment + 1.0) <= rate


def test_a_busy_answer_holds_every_request_for_its_retry_after() -> None:
    clock = _Clock()
    budget = ProviderBudget("p", ProviderLimits(5, 10.0), clock=clock, sleep=clock.sleep)
    budget.pace()
    budget.hold(3.0)
    budget.pace()
    assert clock.now == pytest.approx(3.0)
    budget.hold(None)  # no Retry-After: one second
    budget.pace()
    assert clock.now == pytest.approx(4.0)


def test_a_hold_past_the_patience_defers_at_once() -> None:
    clock = _Clock()
    budget = ProviderBudget("p", ProviderLimits(5, 10.0), clock=clock, sleep=clock.sleep,
                            patience_seconds=2.0)
    budget.hold(30.0)
    with deferring(), pytest.raises(ProviderBusy) as refused:
        budget.pace()
    assert refused.value.retry_after == pytest.approx(30.0)
    assert clock.now == 0.0


def test_a_request_whose_turn_is_now_goes_out_even_near_the_deadline() -> None:
    # An invocation with less than the HTTP layer's safety margin left still sends a request
    # that needs no wait: "over the budget" would be a false report of a busy provider.
    clock = _Clock()
    budget = ProviderBudget("p", ProviderLimits(5, 10.0), clock=clock, sleep=clock.sleep)
    with deadline_from(lambda: 500):
        budget.pace()
        with pytest.raises(ProviderBusy):  # one that would have to wait is still refused
            for _ in range(20):
                budget.pace()
