"""The deferral schedule and budget of busy providers, as a user configures them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from convbridge.backpressure import budget_spent, deferrals_of, delay_seconds
from convbridge.budget import RATE_HEADROOM, ProviderBudget, ProviderLimits, deferring
from convbridge.errors import ProviderBusy

ENV = {"CONVBRIDGE_RULES": "r.yaml", "CONVBRIDGE_CONTEXT_SECRET": "c",
       "CONVBRIDGE_IDEMPOTENCY_TABLE": "t"}


def _bridge(**env: str) -> SimpleNamespace:
    from convbridge.settings import Settings

    return SimpleNamespace(settings=Settings.from_env({**ENV, **env}))


def test_deferrals_back_off_doubling_to_the_cap_and_honour_retry_after() -> None:
    bridge = _bridge(CONVBRIDGE_BACKPRESSURE_BASE_SECONDS="30",
                     CONVBRIDGE_BACKPRESSURE_MAX_SECONDS="900")
    assert [delay_seconds(bridge, n, 0) for n in (1, 2, 3, 6, 50)] == [30, 60, 120, 900, 900]
    assert delay_seconds(bridge, 1, 75.2) == 76
    assert delay_seconds(bridge, 1, 5000) == 900  # SQS's longest delay


def test_the_budget_ends_only_after_the_configured_deferrals() -> None:
    bridge = _bridge(CONVBRIDGE_BACKPRESSURE_MAX_DEFERRALS="3")
    attribute = {"convbridge-deferrals": {"stringValue": "2", "dataType": "Number"}}
    assert deferrals_of(attribute) == 2 and not budget_spent(bridge, attribute)
    attribute["convbridge-deferrals"]["stringValue"] = "3"
    assert budget_spent(bridge, attribute)
    assert deferrals_of({"convbridge-deferrals": {"stringValue": "x"}}) == 0
    assert deferrals_of(None) == 0


def test_provider_limits_come_from_the_adapter_unless_set() -> None:
    assert _bridge().settings.provider_limits("cloudconvert") == ProviderLimits(5, 10.0)
    settings = _bridge(CONVBRIDGE_CLOUDCONVERT_MAX_CONCURRENT_JOBS="25",
                       CONVBRIDGE_CLOUDCONVERT_REQUESTS_PER_SECOND="2.5").settings
    assert settings.provider_limits("cloudconvert") == ProviderLimits(25, 2.5)


def test_an_unusable_limit_is_reported_at_cold_start() -> None:
    from convbridge.errors import ConfigError

    with pytest.raises(ConfigError, match="FREECONVERT_REQUESTS_PER_SECOND"):
        _bridge(CONVBRIDGE_FREECONVERT_REQUESTS_PER_SECOND="fast")


def test_a_deferrable_request_over_the_rate_is_refused_instead_of_waiting_long() -> None:
    clock = [0.0]
    slept: list[float] = []
    budget = ProviderBudget("p", ProviderLimits(1, 1.0), clock=lambda: clock[0],
                            sleep=slept.append, patience_seconds=2.5)
    window = 1.0 + RATE_HEADROOM
    with deferring():
        budget.pace()
        budget.pace()  # waits one window for its turn
        budget.pace()  # two
        with pytest.raises(ProviderBusy):
            budget.pace()  # would wait three
    assert slept == pytest.approx([window, 2 * window])
