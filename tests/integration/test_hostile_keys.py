"""A corpus of hostile object keys through the real trigger: every key ends with a failure
report, a finished job or a logged skip; nothing crashes the batch and nothing is written
outside the rule's prefixes."""

from __future__ import annotations

import json
import unicodedata
from typing import Any
from urllib.parse import quote_plus

from devstack.stack import DevStack, s3_put_event
from tests.conftest import png_bytes

PNG = png_bytes((8, 8))
PREFIXES = ("outbox/", "results/", "failures/")

KEYS = [
    "inbox/a b.png", "inbox/ leading.png", "inbox/trailing .png", "inbox/two  spaces.png",
    "inbox/a+b.png", "inbox/+.png", "inbox/100%.png", "inbox/%2F.png", "inbox/%25%32%46.png",
    "inbox/%.png", "inbox/" + unicodedata.normalize("NFC", "résumé.png"),
    "inbox/" + unicodedata.normalize("NFD", "résumé.png"), "inbox/ﬁle.png", "inbox/\u2126.png",
    "inbox/\u03a9.png", "inbox/📷.png", "inbox/写真/夏.png", "inbox/a\u200bb.png",
    "inbox/\u202egnp.exe.png", "inbox/../escape.png", "inbox/a/../../escape.png",
    "inbox/./dot.png", "inbox/..png", "inbox/...png", "/inbox/rooted.png",
    "inbox//double-slash.png", "inbox/a\nb.png", "inbox/a\rb.png", "inbox/a\tb.png",
    "inbox/a\x1bb.png", "inbox/a\x7fb.png", "inbox/a\x00b.png",
    "inbox/" + "x" * 1014 + ".png", "inbox/" + "é" * 400 + ".png", "inbox/folder/", "inbox/",
    "inbox/noext", "inbox/.png", "inbox/UPPER.PNG", "inbox/trailing-dot.png.",
    "inbox/a&b=c?.png", "inbox/a#b.png", "inbox/[x].png", "inbox/*.png", "inbox/a?b.png",
    "inbox/$x.png", "inbox/\\back.png", 'inbox/quote".png', "inbox/'single'.png",
    "inbox/<tag>.png", "inbox/a;b.png", "inbox/~x.png", "inbox/a:b.png", "inbox/-dash.png",
    "inbox/--.png", "inbox/outbox/nested.png", "inbox/results/x.png.json",
]
#: keys whose derived names would climb out of their folder or pass for other names
DECEIVING = [
    "inbox/..\\..\\escape.png", "inbox/\uff0e\uff0e/escape.png", "inbox/\uff0e/dot.png",
    "inbox/\u2025/leader.png", "inbox/a\uff0fb.png", "inbox/a\uff3cb.png",
    "inbox/\u2066isolate\u2069.png", "inbox/\ufeffbom.png", "inbox/a\u2028b.png",
    "inbox/a\ufdd0b.png", "inbox/x.pdf/inside-an-output-folder.png",
]


def event_for(stack: DevStack, key: str, size: int) -> dict[str, Any]:
    record = s3_put_event(stack.bucket, key, size, "d41d8cd98f00b204e9800998ecf8427e")
    record["Records"][0]["s3"]["object"]["key"] = quote_plus(key, safe="/")
    return record


def test_hostile_keys_never_crash_and_never_write_outside_the_rules_prefixes(
        stack: DevStack) -> None:
    assert len(KEYS) >= 50 and len(set(KEYS + DECEIVING)) == len(KEYS + DECEIVING)
    uploaded = set()
    records: list[dict[str, Any]] = []
    for key in KEYS + DECEIVING:
        try:
            stack.upload(key, PNG)
            uploaded.add(key)
        except Exception:  # noqa: BLE001 (S3 refuses some of these keys itself: fine)
            pass
        records += event_for(stack, key, len(PNG))["Records"]
    stack.upload("inbox/zero.png", b"")
    stack.upload("inbox/huge-declared.png", PNG)
    uploaded |= {"inbox/zero.png", "inbox/huge-declared.png"}
    records += event_for(stack, "inbox/zero.png", 0)["Records"]
    records += event_for(stack, "inbox/huge-declared.png", 10**15)["Records"]

    summary = stack.trigger({"Records": records})
    stack.wait(timeout=120)

    outcomes = {item["object"]: item for item in summary["objects"]}
    assert all(item["status"] in {"submitted", "rejected", "skipped"}
               for item in outcomes.values()), json.dumps(summary, indent=1)
    assert all(item["reason"] for item in outcomes.values() if item["status"] == "skipped")
    by_key = {item["object"].split("/", 3)[3]: item for item in summary["objects"]}
    for key, item in by_key.items():
        relative = key.removeprefix("inbox/")
        if item["status"] == "rejected":
            assert stack.read_json(f"failures/{relative}.json") is not None, key
        if item["status"] == "submitted":
            record = stack.read_json(f"results/{relative}.json")
            assert record is not None and record["status"] in {"finished", "failed"}, key
    assert by_key["inbox/zero.png"]["status"] == "rejected"
    assert by_key["inbox/huge-declared.png"]["status"] == "rejected"
    assert by_key["inbox/../escape.png"]["status"] == "skipped"
    assert by_key["inbox/a\nb.png"]["status"] == "skipped"
    for key in DECEIVING + ["inbox/a\u200bb.png", "inbox/\u202egnp.exe.png", "inbox/\\back.png",
                            "inbox//double-slash.png"]:
        assert by_key[key]["status"] == "skipped", key
        assert by_key[key]["reason"].startswith("key refused"), (key, by_key[key]["reason"])
    nfc, nfd = (unicodedata.normalize(form, "résumé") for form in ("NFC", "NFD"))
    assert stack.read_json(f"results/{nfc}.png.json")["source"]["key"] == f"inbox/{nfc}.png"  # type: ignore[index]
    assert stack.read_json(f"results/{nfd}.png.json")["source"]["key"] == f"inbox/{nfd}.png"  # type: ignore[index]

    stray = [k for k in stack.objects() if k not in uploaded and not k.startswith(PREFIXES)]
    assert stray == []
    for key in stack.objects("outbox/"):
        assert ".." not in key.split("/")
    assert stack.sandbox.job_count() == sum(
        1 for item in outcomes.values() if item["status"] == "submitted")
