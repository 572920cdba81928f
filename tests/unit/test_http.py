"""Retries, Retry-After and deadlines in convbridge.http, on httpx MockTransport."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convbridge.errors import ProviderOutcomeUnknown
from convbridge.http import GaveUp, RetryPolicy, deadline_from, retry_after_seconds, send

NO_JITTER = RetryPolicy(max_attempts=5, base_seconds=0.0, cap_seconds=0.0)


def client(answers: list[httpx.Response | type[Exception]]) -> tuple[httpx.Client, list[str]]:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        answer = answers.pop(0)
        if isinstance(answer, type):
            raise answer("simulated", request=request)  # type: ignore[call-arg]
        return answer

    return httpx.Client(transport=httpx.MockTransport(handler)), seen


def recorder() -> tuple[list[float], Callable[[float], None]]:
    waits: list[float] = []
    return waits, waits.append


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(later, now=now) == 30.0
    assert retry_after_seconds(format_datetime(now - timedelta(hours=1), usegmt=True),
                               now=now) == 0.0
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_retryable_statuses_are_retried_honouring_retry_after(status: int) -> None:
    http, seen = client([httpx.Response(status, headers={"Retry-After": "3"}),
                         httpx.Response(200, json={"ok": True})])
    waits, sleep = recorder()
    with deadline_from(lambda: 60_000):
        response = send(http, "GET", "https://p/x", idempotent=True, policy=NO_JITTER,
                        sleep=sleep)
    assert response.status_code == 200 and len(seen) == 2
    assert waits == [3.0]


def test_other_4xx_answers_return_at_once() -> None:
    http, seen = client([httpx.Response(422, json={"message": "bad"})])
    waits, sleep = recorder()
    assert send(http, "POST", "https://p/x", idempotent=False, sleep=sleep).status_code == 422
    assert seen == ["POST"] and waits == []


def test_connection_errors_are_retried_with_growing_backoff() -> None:
    http, seen = client([httpx.ConnectError, httpx.ConnectError, httpx.Response(200)])
    waits, sleep = recorder()
    policy = RetryPolicy(max_attempts=5, base_seconds=1.0, cap_seconds=100.0)
    with deadline_from(lambda: 600_000):
        assert send(http, "POST", "https://p/x", idempotent=False, policy=policy,
                    sleep=sleep).status_code == 200
    assert len(seen) == 3
    assert 0 <= waits[0] <= 1.0 and 0 <= waits[1] <= 2.0


def test_lost_answers_to_non_idempotent_requests_are_not_retried_blindly() -> None:
    http, seen = client([httpx.ReadTimeout, httpx.Response(200)])
    with pytest.raises(ProviderOutcomeUnknown):
        send(http, "POST", "https://p/jobs", idempotent=False, sleep=lambda s: None)
    assert seen == ["POST"]
    http, seen = client([httpx.ReadTimeout, httpx.Response(200)])
    assert send(http, "GET", "https://p/jobs", idempotent=True, policy=NO_JITTER,
                sleep=lambda s: None).status_code == 200


def test_a_wait_past_the_deadline_gives_up_without_sleeping() -> None:
    http, seen = client([httpx.Response(429, headers={"Retry-After": "30"})])
    waits, sleep = recorder()
    with deadline_from(lambda: 10_000), pytest.raises(GaveUp) as caught:
        send(http, "POST", "https://p/jobs?sig=secret", idempotent=False, sleep=sleep)
    assert waits == [] and len(seen) == 1
    assert "deadline" in str(caught.value) and "secret" not in str(caught.value)
    assert caught.value.response is not None and caught.value.response.status_code == 429


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_gateway_error_on_a_create_is_an_unknown_outcome_never_resent(status: int) -> None:
    """A gateway may answer after the service made the job: sending again could make two."""
    http, seen = client([httpx.Response(status), httpx.Response(201)])
    waits, sleep = recorder()
    with deadline_from(lambda: 60_000), pytest.raises(ProviderOutcomeUnknown) as caught:
        send(http, "POST", "https://p/jobs?sig=secret", idempotent=False, sleep=sleep)
    assert waits == [] and len(seen) == 1
    assert str(status) in str(caught.value) and "secret" not in str(caught.value)


def test_attempts_are_bounded() -> None:
    http, seen = client([httpx.Response(502) for _ in range(5)])
    with deadline_from(lambda: 60_000), pytest.raises(GaveUp, match="after 5 attempts"):
        send(http, "GET", "https://p/x", idempotent=True, policy=NO_JITTER, sleep=lambda s: None)
    assert len(seen) == 5


#: what a provider can answer a request with: statuses, and errors before or after sending
_ANSWERS = st.sampled_from([200, 201, 400, 409, 422, 429, 500, 502, 503, 504,
                            httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout,
                            httpx.RemoteProtocolError])
#: answers that prove the provider did nothing with the request
_NOTHING_DONE = {429, httpx.ConnectError, httpx.ConnectTimeout}


@settings(max_examples=300, deadline=None)  # 300 examples, well under a second
@given(answers=st.lists(_ANSWERS, min_size=1, max_size=8))
def test_a_create_is_sent_again_only_after_an_answer_proving_nothing_was_done(
        answers: list[int | type[Exception]]) -> None:
    """Whatever the provider answers, a non-idempotent request is repeated only after a 429
    or a connection that was never made, and the caller gets a response, GaveUp or
    ProviderOutcomeUnknown, nothing else."""
    script = [httpx.Response(a) if isinstance(a, int) else a for a in answers]
    script += [httpx.Response(201)] * NO_JITTER.max_attempts  # never run out
    http, seen = client(script)
    try:
        with deadline_from(lambda: 600_000):
            send(http, "POST", "https://p/jobs", idempotent=False, policy=NO_JITTER,
                 sleep=lambda s: None)
    except (GaveUp, ProviderOutcomeUnknown):
        pass
    answered = answers + [201] * NO_JITTER.max_attempts
    assert all(answer in _NOTHING_DONE for answer in answered[:len(seen) - 1])
