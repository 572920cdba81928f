"""The retry event's one accepted shape: what the CLI sends parses back to the same request,
and anything else is refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from convbridge.events.retry import (
    MAX_KEY_BYTES,
    MAX_KEYS,
    BadRetryEvent,
    RetryCursor,
    RetryRequest,
    is_retry_event,
    parse_retry_event,
)


@pytest.mark.parametrize("request_", [
    RetryRequest(),
    RetryRequest(rule="images", dry_run=True),
    RetryRequest(keys=("inbox/a b.png", "inbox/ü.png")),
    RetryRequest(rule="images", cursor=RetryCursor("images", "failures/b.png.json")),
])
def test_what_the_cli_sends_is_what_the_function_reads(request_: RetryRequest) -> None:
    event = request_.to_json()
    assert is_retry_event(event)
    assert parse_retry_event(event) == request_


def test_storage_events_are_not_retry_events() -> None:
    assert not is_retry_event({"Records": [{"eventSource": "aws:s3"}]})
    assert not is_retry_event(["convbridge"])


@pytest.mark.parametrize(("changes", "named"), [
    ({"keys": []}, "keys"),
    ({"keys": ["k"] * (MAX_KEYS + 1)}, f"at most {MAX_KEYS}"),
    ({"keys": ["é" * (MAX_KEY_BYTES // 2 + 1)]}, "keys[0]: longer than"),
    ({"keys": ["inbox/a.png", 7]}, "keys[1]"),
    ({"rule": ""}, "rule"),
    ({"rule": ["images"]}, "rule"),
    ({"dry_run": 1}, "dry_run"),
    ({"cursor": {"rule": "images", "start": "x", "extra": 1}}, "cursor"),
    ({"cursor": {"rule": None, "start": "x"}}, "cursor.rule"),
    ({"cursor": {"rule": "images", "start": ""}}, "cursor.start"),
    ({"convbridge": "RETRY"}, "convbridge"),
    ({"Records": []}, "unknown field(s): Records"),
])
def test_anything_else_is_refused_naming_the_field(changes: dict[str, Any], named: str) -> None:
    event = {**RetryRequest().to_json(), **changes}
    with pytest.raises(BadRetryEvent) as refused:
        parse_retry_event(event)
    assert named in str(refused.value)
