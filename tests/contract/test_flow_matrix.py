"""The contract every provider x storage pair keeps, run against the sandbox and each storage's
real local server: a good upload becomes a converted output and a finished result record; a
corrupt upload becomes a failure report carrying the provider's own error code and message.

Pairs the providers cannot serve are held to an honest refusal instead: a failure report that
says why, never a silent drop.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from convbridge.planner import plan_route
from convbridge.providers import PROVIDERS
from convbridge.storage import STORAGES
from devstack.harness import load_harness
from devstack.stack import DevStack
from tests.conftest import png_bytes

#: every registered adapter, those added by installed packages included
PAIRS = [(s, p) for s in STORAGES.names() for p in PROVIDERS.names()]


def refusal(storage: str, provider: str) -> str | None:
    """The code of a pair with no way to hand the provider the input: the bridge cannot sign
    a URL for the storage's files and the provider takes no upload (see `convbridge routes`)."""
    plan = plan_route(STORAGES.load(storage), PROVIDERS.load(provider), "presigned_url")
    if plan.read_grant == "upload" and not PROVIDERS.load(provider).takes_uploads:
        return "UPLOAD_UNSUPPORTED"
    return None


GOOD, BROKEN = "inbox/pair/photo 1.png", "inbox/pair/broken.png"


@pytest.fixture(params=PAIRS,
                ids=lambda pair: f"{pair[0]}-{pair[1]}")
def pair(request: pytest.FixtureRequest) -> Iterator[tuple[str, str, DevStack]]:
    storage, provider = request.param
    harness = load_harness(storage)()
    rules = harness.default_rules("presigned_url").replace(
        "provider: cloudconvert", f"provider: {provider}")
    with DevStack(storage=harness, rules_text=rules) as stack:
        yield storage, provider, stack


def test_good_and_corrupt_uploads(pair: tuple[str, str, DevStack]) -> None:
    storage, provider, stack = pair
    stack.upload(GOOD, png_bytes())
    stack.upload(BROKEN, b"\x89PNG\r\n\x1a\nnot an image at all")
    for key in (GOOD, BROKEN):
        stack.trigger(stack.event_for(key))
    stack.wait(timeout=120)
    good = stack.read_json("results/pair/photo 1.png.json")
    bad = stack.read_json("failures/pair/broken.png.json")
    refused = refusal(storage, provider)
    if refused:
        report = stack.read_json("failures/pair/photo 1.png.json")
        assert report is not None and report["error"]["code"] == refused, report
        assert report["error"]["message"]
        return
    assert good is not None and good["status"] == "finished", good
    assert good["provider"] == provider
    output = good["outputs"][0]
    assert output["size"] > 0
    assert (stack.harness.read_bytes(output["key"]) or b"").startswith(b"%PDF")
    assert bad is not None and bad["status"] == "failed", bad
    # the code the provider's sandbox dialect reports for an unreadable image
    assert bad["error"]["code"] == stack.sandbox.dialects[provider].corrupt_code
    assert bad["error"]["message"]
