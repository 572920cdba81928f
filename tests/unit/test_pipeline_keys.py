"""Keys the bridge refuses to derive output and record names from."""

from __future__ import annotations

import pytest

from convbridge.pipeline import unsafe_key_reason


@pytest.mark.parametrize("key", [
    "inbox/a.png", "inbox/my file+1.png", "inbox/résumé.png", "inbox/re\u0301sume\u0301.png",
    "inbox/100%.png", "inbox/a..b.png", "inbox/.hidden.png", "inbox/" + "x" * 1000 + ".png",
])
def test_ordinary_keys_are_accepted(key: str) -> None:
    assert unsafe_key_reason(key) is None


@pytest.mark.parametrize(("key", "reason"), [
    ("inbox/folder/", "folder marker"),
    ("", "folder marker"),
    ("/inbox/a.png", "starts with '/'"),
    ("inbox/../etc/passwd.png", "'..'"),
    ("inbox/./a.png", "'..'"),
    ("inbox/a\nb.png", "control characters"),
    ("inbox/a\x00.png", "control characters"),
    ("inbox/a\x7f.png", "control characters"),
])
def test_hostile_keys_are_refused_with_a_reason(key: str, reason: str) -> None:
    found = unsafe_key_reason(key)
    assert found is not None and reason in found
