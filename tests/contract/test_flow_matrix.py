"""The contract every provider x storage pair keeps, run against the sandbox and each storage's
real local server: a good upload becomes a converted output and a finished result record; a
corrupt upload becomes a failure report carrying the provider's own error code and message.

Pairs the providers cannot serve are held to an honest refusal instead: a failure report that
says why, never a silent drop.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devstack.harness import load_harness
from devstack.sandbox.onlineconvert import ERROR_CODES as ONLINECONVERT_ERRORS
from devstack.stack import DevStack
from tests.conftest import png_bytes

STORAGES = ["s3", "azure", "gcs", "sftp"]
PROVIDERS = ["cloudconvert", "freeconvert", "onlineconvert", "cloudconvert_v1"]
#: the code each dialect's sandbox reports for an unreadable image
CORRUPT_CODE = {"cloudconvert": "CONVERSION_FAILED", "freeconvert": "CONVERSION_FAILED",
                "onlineconvert": str(ONLINECONVERT_ERRORS["CONVERSION_FAILED"]),
                "cloudconvert_v1": "422"}
#: pairs with no way to hand the provider the input: the bridge cannot sign a URL for an SFTP
#: file and these providers take no upload from it (see `convbridge routes`)
REFUSED = {("sftp", p): "UPLOAD_UNSUPPORTED"
           for p in ("freeconvert", "onlineconvert", "cloudconvert_v1")}
GOOD, BROKEN = "inbox/pair/photo 1.png", "inbox/pair/broken.png"


@pytest.fixture(params=[(s, p) for s in STORAGES for p in PROVIDERS],
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
    refusal = REFUSED.get((storage, provider))
    if refusal:
        report = stack.read_json("failures/pair/photo 1.png.json")
        assert report is not None and report["error"]["code"] == refusal, report
        assert report["error"]["message"]
        return
    assert good is not None and good["status"] == "finished", good
    assert good["provider"] == provider
    output = good["outputs"][0]
    assert output["size"] > 0
    assert (stack.harness.read_bytes(output["key"]) or b"").startswith(b"%PDF")
    assert bad is not None and bad["status"] == "failed", bad
    assert bad["error"]["code"] == CORRUPT_CODE[provider]
    assert bad["error"]["message"]
