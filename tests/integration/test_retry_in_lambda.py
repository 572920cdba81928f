"""``convbridge retry --stack`` on the function side: the real S3 trigger handler answering
retry events against moto and the sandbox, as the CLI invokes it inside AWS."""

from __future__ import annotations

from typing import Any

import pytest

from devstack.stack import DevStack
from tests.conftest import png_bytes

PNG = png_bytes((16, 16))

RULES = """\
version: 1
rules:
  - name: images-to-pdf
    match: {storage: s3, location: convbridge-demo, prefix: inbox/, suffixes: [.png]}
    convert: {to: pdf}
    provider: cloudconvert
    outputs: outbox/
    results: results/
    failures: failures/
    on_failure: move
"""


def retry_event(**fields: Any) -> dict[str, Any]:
    return {"convbridge": "retry", "rule": None, "keys": None, "dry_run": False,
            "cursor": None, **fields}


def fail_then_fix(stack: DevStack, *names: str) -> None:
    """Each source fails its job (moved aside beside its report), then the user puts a good
    file in place of the moved copy."""
    for name in names:
        stack.upload(f"inbox/{name}", b"broken upload")
        stack.trigger(stack.s3_event(f"inbox/{name}"))
    stack.wait()
    for name in names:
        assert stack.read_json(f"failures/{name}.json") is not None
        stack.upload(f"failures/{name}", PNG)


def test_failed_sources_are_resubmitted_by_the_trigger_and_finish() -> None:
    with DevStack(rules_text=RULES) as stack:
        fail_then_fix(stack, "fixme.png")
        answer = stack.invoke_trigger(retry_event())
        assert answer["cursor"] is None and answer["counts"] == {"submitted": 1}
        [item] = answer["items"]
        assert item["object"] == "s3://convbridge-demo/inbox/fixme.png"
        assert item["report"] == "failures/fixme.png.json" and item["job_id"]
        stack.wait()
        record = stack.read_json("results/fixme.png.json")
        assert record is not None and record["status"] == "finished"
        assert record["job_id"] == item["job_id"]
        assert stack.read_json("failures/fixme.png.json") is None
        assert "outbox/fixme.png.pdf" in stack.objects("outbox/")
        # the report is gone, so a second run resubmits nothing
        assert stack.invoke_trigger(retry_event())["items"] == []


def test_dry_run_lists_what_would_be_resubmitted_and_changes_nothing() -> None:
    with DevStack(rules_text=RULES) as stack:
        fail_then_fix(stack, "a.png")
        stack.upload("inbox/gone.png", b"broken upload")
        stack.trigger(stack.s3_event("inbox/gone.png"))
        stack.wait()
        stack.s3.delete_object(Bucket=stack.bucket, Key="failures/gone.png")
        before = stack.objects()
        jobs_before = stack.sandbox.job_count()
        answer = stack.invoke_trigger(retry_event(dry_run=True))
        assert answer["dry_run"] is True and answer["cursor"] is None
        assert {(i["object"], i["status"], i["reason"]) for i in answer["items"]} == {
            ("s3://convbridge-demo/inbox/a.png", "would_resubmit",
             "put back from failures/a.png first"),
            ("s3://convbridge-demo/inbox/gone.png", "skipped", "the source is gone"),
        }
        stack.wait()
        assert stack.objects() == before
        assert stack.sandbox.job_count() == jobs_before


@pytest.mark.parametrize(("fields", "named"), [
    ({"keys": "inbox/a.png"}, "keys"),
    ({"keys": ["inbox/a.png"] * 101}, "keys"),
    ({"dry_run": "yes"}, "dry_run"),
    ({"rule": "no-such-rule"}, "no rule named 'no-such-rule'"),
    ({"cursor": {"rule": "images-to-pdf"}}, "cursor"),
    ({"bucket": "elsewhere"}, "unknown field(s): bucket"),
    ({"convbridge": "submit"}, "convbridge"),
])
def test_a_bad_retry_event_is_answered_with_the_field_it_got_wrong(
        fields: dict[str, Any], named: str) -> None:
    with DevStack(rules_text=RULES) as stack:
        fail_then_fix(stack, "a.png")
        answer = stack.invoke_trigger(retry_event(**fields))
        assert answer["error"] == "BadRetryEvent" and named in answer["message"]
        assert stack.read_json("failures/a.png.json") is not None
        assert "inbox/a.png" not in stack.objects("inbox/")


def test_a_run_stopped_at_the_cap_answers_a_cursor_and_the_next_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from convbridge import runtime

    monkeypatch.setattr(runtime, "RETRY_REPORTS_PER_INVOCATION", 2)
    with DevStack(rules_text=RULES) as stack:
        fail_then_fix(stack, "one.png", "three.png", "two.png")
        first = stack.invoke_trigger(retry_event())
        assert [i["report"] for i in first["items"]] == ["failures/one.png.json",
                                                         "failures/three.png.json"]
        assert first["cursor"] == {"rule": "images-to-pdf", "start": "failures/two.png.json"}
        assert "2 reports per run" in first["stopped"]
        second = stack.invoke_trigger(retry_event(cursor=first["cursor"]))
        assert [i["report"] for i in second["items"]] == ["failures/two.png.json"]
        assert second["cursor"] is None and second["counts"] == {"submitted": 1}
        stack.wait()
        assert set(stack.objects("outbox/")) == {
            "outbox/one.png.pdf", "outbox/three.png.pdf", "outbox/two.png.pdf"}
        assert not [k for k in stack.objects("failures/") if k.endswith(".json")]
