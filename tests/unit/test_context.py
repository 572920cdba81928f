"""The signed job context: only the bridge's own key can say where results go."""

from __future__ import annotations

import time

import pytest

from convbridge.context import JobContext, sign_context, verify_context
from convbridge.errors import ContextError

KEY = b"k" * 48


def context(**changes: object) -> JobContext:
    base = JobContext.new(rule="r", storage="s3", location="bucket", key="inbox/ré sumé+1.png",
                          version="v1", output_key="outbox/ré sumé+1.pdf", route="native")
    return JobContext(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_round_trip_keeps_every_field() -> None:
    original = context()
    assert verify_context(sign_context(original, KEY), KEY, max_age_seconds=60) == original


def test_tampered_payload_or_other_key_is_refused() -> None:
    token = sign_context(context(), KEY)
    body, mac = token.rsplit(".", 1)
    forged = sign_context(context(location="attacker-bucket"), b"x" * 48)
    with pytest.raises(ContextError):
        verify_context(forged, KEY, max_age_seconds=60)
    with pytest.raises(ContextError):
        verify_context(body[:-2] + "AA." + mac, KEY, max_age_seconds=60)
    with pytest.raises(ContextError):
        verify_context(forged.rsplit(".", 1)[0] + "." + mac, KEY, max_age_seconds=60)


@pytest.mark.parametrize("token", [None, "", "nodot", "a.b", "....."])
def test_missing_or_garbage_tokens_are_refused(token: str | None) -> None:
    with pytest.raises(ContextError):
        verify_context(token, KEY, max_age_seconds=60)


def test_old_contexts_expire() -> None:
    token = sign_context(context(issued_at=int(time.time()) - 120), KEY)
    with pytest.raises(ContextError, match="expired"):
        verify_context(token, KEY, max_age_seconds=60)
