"""No job left behind: with every callback lost in the sandbox, the reconciler asks the
provider and settles each job once, through the same settle step and claim as a callback. Over
real HTTP against moto (S3, DynamoDB, SQS, Secrets Manager) and the sandbox, per dialect."""

from __future__ import annotations

import importlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from convbridge import records, runtime
from convbridge.cli import main
from convbridge.context import JobContext
from convbridge.model import ObjectRef
from convbridge.reconcile import reconcile
from devstack.harness.base import DEFAULT_RULES
from devstack.lambda_local import LocalContext, load_function
from devstack.sandbox import Faults
from devstack.sandbox.onlineconvert import ERROR_CODES as ONLINECONVERT_ERRORS
from devstack.stack import DevStack
from tests.conftest import png_bytes

PNG = png_bytes((16, 16))
#: the API path below which each dialect's requests go, as the sandbox logs them
API = {"cloudconvert": "/v2/", "freeconvert": "/freeconvert/v1/",
       "onlineconvert": "/onlineconvert/v2/", "cloudconvert_v1": "/v1/"}
#: a moment past every provider's settle deadline
LATER = timedelta(hours=7)


def rules_for(provider: str) -> str:
    return DEFAULT_RULES.replace("provider: cloudconvert", f"provider: {provider}") % {
        "storage": "s3", "location": "convbridge-demo", "read_grant": "presigned_url"}


def results(stack: DevStack) -> dict[str, dict[str, Any]]:
    return {key: stack.read_json(key) or {} for key in stack.objects("results/")}


def provider_calls(stack: DevStack, provider: str) -> list[dict[str, Any]]:
    return [r for r in stack.sandbox.requests() if r["path"].startswith(API[provider])]


def submit_lost(stack: DevStack, keys: list[str], broken: tuple[str, ...] = ()) -> None:
    """Upload and submit ``keys`` (those in ``broken`` as an unreadable image); every job
    runs, and every callback is dropped."""
    for key in keys:
        stack.upload(key, b"\x89PNG\r\n\x1a\nnot an image at all" if key in broken else PNG)
    summary = stack.trigger({"Records": [r for key in keys
                                         for r in stack.s3_event(key)["Records"]]})
    assert summary["counts"] == {"submitted": len(keys)}
    stack.wait(timeout=120)
    assert {r["status"] for r in results(stack).values()} == {"submitted"}


def test_every_callback_of_20_jobs_dropped_the_reconciler_settles_all_20_once_each() -> None:
    with DevStack(faults=Faults(drop_callbacks=True)) as stack:
        keys = [f"inbox/lost/{n:02d}.png" for n in range(20)]
        submit_lost(stack, keys)
        assert stack.sandbox.deliveries() == []
        bridge = runtime.bridge()
        jobs = {job["id"] for job in stack.sandbox.jobs()}

        young = reconcile(bridge)  # nothing is past CloudConvert's deadline yet
        assert young.examined == 20 and young.items == []

        report = reconcile(bridge, now=datetime.now(UTC) + LATER)
        assert [item.status for item in report.items] == ["settled"] * 20
        records = results(stack)
        assert {r["status"] for r in records.values()} == {"finished"}
        assert {r["job_id"] for r in records.values()} == jobs
        outputs = stack.objects("outbox/")
        assert sorted(outputs) == sorted(f"outbox/lost/{n:02d}.png.pdf" for n in range(20))
        assert all(size > 0 for size in outputs.values())
        # one lookup per job (CloudConvert exported the outputs to S3 itself)
        lookups = [r["path"] for r in provider_calls(stack, "cloudconvert")
                   if r["method"] == "GET"]
        assert sorted(lookups) == sorted(f"/v2/jobs/{job}" for job in jobs)

        again = reconcile(bridge, now=datetime.now(UTC) + LATER)
        assert again.examined == 20 and again.items == []

        # the lost callbacks arrive after all: genuine, accepted, and they change nothing
        settled = {key: stack.harness.read_bytes(key) for key in records}
        stack.sandbox.set_faults(Faults())
        assert stack.sandbox.deliver_dropped() == 20
        stack.wait(timeout=60)
        deliveries = stack.sandbox.deliveries()
        assert len(deliveries) == 20 and {d["status"] for d in deliveries} <= {200, 202}
        assert {key: stack.harness.read_bytes(key) for key in records} == settled
        assert stack.objects("outbox/") == outputs and stack.objects("failures/") == {}
        assert stack.sandbox.job_count() == 20


def test_an_empty_run_makes_no_provider_call() -> None:
    with DevStack() as stack:
        bridge = runtime.bridge()
        report = reconcile(bridge, now=datetime.now(UTC) + LATER)
        assert (report.examined, report.items) == (0, [])
        # records that are all settled already are read, and no provider is asked either
        stack.upload("inbox/fine.png", PNG)
        stack.trigger(stack.s3_event("inbox/fine.png"))
        stack.wait()
        assert results(stack)["results/fine.png.json"]["status"] == "finished"
        before = stack.sandbox.requests()
        report = reconcile(bridge, now=datetime.now(UTC) + LATER)
        assert (report.examined, report.items) == (1, [])
        # the scheduled function, as EventBridge invokes it
        summary = load_function("reconciler").handler(
            {"detail-type": "Scheduled Event", "time": "2026-12-01T00:00:00Z"}, LocalContext())
        assert summary == {"examined": 1, "overdue": 0, "resumed_later": []}
        assert stack.sandbox.requests() == before


#: the code each dialect reports for an unreadable image
FAILURE_CODE = {"cloudconvert": "CONVERSION_FAILED", "freeconvert": "CONVERSION_FAILED",
                "onlineconvert": str(ONLINECONVERT_ERRORS["CONVERSION_FAILED"]),
                "cloudconvert_v1": "422"}


@pytest.mark.parametrize("provider", list(API))
def test_a_job_the_provider_forgot_gets_a_job_lost_failure_report(provider: str) -> None:
    """Per dialect, every callback lost: a finished job, a failed one and one the provider
    forgot are settled by the reconciler; the late callbacks afterwards change nothing."""
    with DevStack(rules_text=rules_for(provider), faults=Faults(drop_callbacks=True)) as stack:
        submit_lost(stack, ["inbox/forgotten.png", "inbox/kept.png", "inbox/broken.png"],
                    broken=("inbox/broken.png",))
        bridge = runtime.bridge()
        forgotten = results(stack)["results/forgotten.png.json"]["job_id"]
        stack.sandbox.forget_job(forgotten)

        report = reconcile(bridge, now=datetime.now(UTC) + LATER)
        assert sorted((i.record_key, i.status, i.outcome) for i in report.items) == [
            ("results/broken.png.json", "settled", "failed"),
            ("results/forgotten.png.json", "settled", "failed"),
            ("results/kept.png.json", "settled", "finished")]
        lost = stack.read_json("failures/forgotten.png.json")
        assert lost is not None and lost["status"] == "failed"
        assert lost["job_id"] == forgotten and lost["error"]["code"] == "JOB_LOST"
        assert stack.read_json("results/forgotten.png.json") == lost
        broken = stack.read_json("failures/broken.png.json")
        assert broken is not None and broken["error"]["code"] == FAILURE_CODE[provider]
        kept = stack.read_json("results/kept.png.json")
        assert kept is not None and kept["status"] == "finished"
        assert stack.objects("outbox/")["outbox/kept.png.pdf"] == kept["outputs"][0]["size"]

        written = {key: stack.harness.read_bytes(key) for key in stack.objects()}
        stack.sandbox.set_faults(Faults())
        assert stack.sandbox.deliver_dropped() == 3
        stack.wait(timeout=60)
        assert len(stack.sandbox.deliveries()) >= 3
        assert {key: stack.harness.read_bytes(key) for key in stack.objects()} == written


def test_a_bounded_run_goes_on_from_where_the_last_one_stopped() -> None:
    with DevStack(faults=Faults(drop_callbacks=True)) as stack:
        submit_lost(stack, [f"inbox/paged/{n}.png" for n in range(5)])
        bridge = runtime.bridge()
        later = datetime.now(UTC) + LATER
        first = reconcile(bridge, now=later, max_records=2)
        second = reconcile(bridge, now=later, max_records=2)
        third = reconcile(bridge, now=later, max_records=2)
        assert [len(r.items) for r in (first, second, third)] == [2, 2, 1]
        assert (first.resumed_later, second.resumed_later, third.resumed_later) == (
            ["images-to-pdf"], ["images-to-pdf"], [])
        seen = [i.record_key for r in (first, second, third) for i in r.items]
        assert sorted(seen) == sorted(k for k in results(stack) if k.endswith(".json"))
        assert {r.get("status") for k, r in results(stack).items() if k.endswith(".json")} == {
            "finished"}
        # the cursor is set back once a walk reached the end, so the next run starts afresh
        assert stack.read_json("results/.convbridge-reconcile-images-to-pdf") == {"passed": 0}
        assert reconcile(bridge, now=later, max_records=2).examined == 2


def test_convbridge_reconcile_settles_overdue_jobs_from_the_command_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    with DevStack(faults=Faults(drop_callbacks=True)) as stack:
        submit_lost(stack, ["inbox/cli/a.png", "inbox/cli/b.png"])

        def printed() -> list[str]:
            # the functions' JSON log and metric lines share stdout here; the command's own
            # lines are plain text
            return [line for line in capsys.readouterr().out.splitlines()
                    if not line.startswith("{")]

        printed()
        before = stack.sandbox.requests()
        assert main(["reconcile"]) == 0  # nothing is past CloudConvert's deadline yet
        assert printed() == ["2 records read, 0 overdue"]
        assert stack.sandbox.requests() == before

        assert main(["reconcile", "--older-than", "0"]) == 0
        lines = printed()
        jobs = {r["job_id"]: key for key, r in results(stack).items()}
        assert sorted(lines[:-1]) == sorted(f"{key}: job {job} settled as finished"
                                            for job, key in jobs.items())
        assert lines[-1] == "2 records read, 2 overdue"
        assert {r["status"] for r in results(stack).values()} == {"finished"}


def test_a_provider_that_does_not_answer_leaves_the_record_for_the_next_run() -> None:
    with DevStack(faults=Faults(drop_callbacks=True),
                  env={"CONVBRIDGE_HTTP_TIMEOUT_SECONDS": "1"}) as stack:
        submit_lost(stack, ["inbox/slow.png"])
        bridge = runtime.bridge()
        submitted = stack.read_json("results/slow.png.json")
        stack.sandbox.set_faults(Faults(drop_callbacks=True, latency_seconds=1.5))
        report = reconcile(bridge, now=datetime.now(UTC) + LATER)
        assert [(i.status, i.job_id) for i in report.items] == [
            ("error", submitted and submitted["job_id"])]
        assert stack.read_json("results/slow.png.json") == submitted
        assert stack.objects("failures/") == {}

        stack.sandbox.set_faults(Faults(drop_callbacks=True))
        report = reconcile(bridge, now=datetime.now(UTC) + LATER)
        assert [i.status for i in report.items] == ["settled"]
        assert (stack.read_json("results/slow.png.json") or {})["status"] == "finished"


# -- submissions interrupted before their job was recorded ------------------------------------


class Died(BaseException):
    """The invocation ended here (its timeout): nothing after it runs."""


@pytest.mark.parametrize("provider", ["cloudconvert", "freeconvert"])
def test_a_trigger_that_died_after_the_create_is_completed_by_the_redelivery(
        provider: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The trigger stopped right after the provider made the job, before the record, and the
    callback is lost too: the event's redelivery, once the dead invocation's time is up,
    finds the job by its tag and records it (no second job); the reconciler settles it."""
    submit_module = importlib.import_module("convbridge.pipeline.submit")

    real = submit_module._write_submitted
    deaths = [Died()]

    def die_once(*args: Any, **kwargs: Any) -> Any:
        if deaths:
            raise deaths.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(submit_module, "_write_submitted", die_once)
    with DevStack(rules_text=rules_for(provider), faults=Faults(drop_callbacks=True)) as stack:
        stack.upload("inbox/cut.png", PNG)
        event = stack.s3_event("inbox/cut.png")
        with pytest.raises(Died):
            stack.invoke_trigger(event, LocalContext(timeout_seconds=2))
        stack.sandbox.wait_idle(timeout=30)
        [job] = stack.sandbox.provider_jobs(provider)
        assert stack.read_json("results/cut.png.json") is None
        early = stack.invoke_trigger(event, LocalContext(timeout_seconds=60))
        assert [o["status"] for o in early["objects"]] == ["retry"]  # the holder may live
        time.sleep(2.1)
        again = stack.invoke_trigger(event, LocalContext(timeout_seconds=60))
        assert [(o["status"], o["job_id"]) for o in again["objects"]] == [
            ("duplicate", job["id"])]
        assert len(stack.sandbox.provider_jobs(provider)) == 1
        assert (stack.read_json("results/cut.png.json") or {})["job_id"] == job["id"]

        report = reconcile(runtime.bridge(), now=datetime.now(UTC) + LATER)
        assert [(i.status, i.job_id, i.outcome) for i in report.items] == [
            ("settled", job["id"], "finished")]
        record = stack.read_json("results/cut.png.json")
        assert record is not None and record["status"] == "finished", record
        assert stack.objects("outbox/")["outbox/cut.png.pdf"] == record["outputs"][0]["size"]


def submitting_record(ref: ObjectRef, rule: Any, context: JobContext) -> dict[str, Any]:
    """The record the earlier release wrote before it created the job."""
    return records.submitting_record(ref, rule, context_nonce=context.nonce,
                                     route=context.route,
                                     issued_at=context.issued_at).to_json()


@pytest.mark.parametrize("provider", ["cloudconvert", "freeconvert"])
def test_an_earlier_releases_submitting_record_is_found_by_its_tag_and_settled(
        provider: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The earlier release wrote ``submitting`` before the create and stopped right after
    the provider made the job: the reconciler finds the job by its tag and settles it."""
    submit_module = importlib.import_module("convbridge.pipeline.submit")

    def earlier_release(storage: Any, ref: ObjectRef, rule: Any, context: JobContext,
                        job_id: str) -> str:
        storage.write_json(ref.location, rule.result_key(ref.key),
                           submitting_record(ref, rule, context), marker=rule.name)
        return "written"

    monkeypatch.setattr(submit_module, "_write_submitted", earlier_release)
    with DevStack(rules_text=rules_for(provider), faults=Faults(drop_callbacks=True)) as stack:
        stack.upload("inbox/cut.png", PNG)
        stack.trigger(stack.s3_event("inbox/cut.png"))
        stack.wait(timeout=60)
        assert stack.read_json("results/cut.png.json")["status"] == "submitting"  # type: ignore[index]
        [job] = stack.sandbox.provider_jobs(provider)

        report = reconcile(runtime.bridge(), now=datetime.now(UTC) + LATER)
        assert [(i.status, i.job_id, i.outcome) for i in report.items] == [
            ("settled", job["id"], "finished")]
        record = stack.read_json("results/cut.png.json")
        assert record is not None and record["status"] == "finished", record
        assert record["job_id"] == job["id"]
        assert stack.objects("outbox/")["outbox/cut.png.pdf"] == record["outputs"][0]["size"]


def write_submitting(stack: DevStack, key: str) -> None:
    """The record the earlier release left when it stopped before the provider made a job."""
    bridge = runtime.bridge()
    [rule] = bridge.rules.rules
    ref = ObjectRef(storage="s3", location="convbridge-demo", key=key)
    context = JobContext.new(rule=rule.name, storage="s3", location=ref.location, key=key,
                             version=None, output_key=rule.output_key(key), route="relay")
    bridge.storage("s3").write_json(ref.location, rule.result_key(key),
                                    submitting_record(ref, rule, context), marker=rule.name)


@pytest.mark.parametrize("provider", ["cloudconvert", "onlineconvert"])
def test_a_submission_with_no_job_is_left_while_its_claim_lives_then_reported(
        provider: str) -> None:
    """CloudConvert finds no job by the tag; Online-Convert cannot look jobs up at all."""
    with DevStack(rules_text=rules_for(provider)) as stack:
        stack.upload("inbox/never.png", PNG)
        write_submitting(stack, "inbox/never.png")
        bridge = runtime.bridge()

        live = reconcile(bridge, now=datetime.now(UTC) + LATER)
        assert [i.status for i in live.items] == ["pending"]
        assert stack.read_json("results/never.png.json")["status"] == "submitting"  # type: ignore[index]
        assert stack.objects("failures/") == {}

        expired = datetime.now(UTC) + timedelta(seconds=bridge.settings.claim_expiry_seconds)
        report = reconcile(bridge, now=expired + LATER)
        assert [(i.status, i.outcome) for i in report.items] == [("settled", "failed")]
        failure = stack.read_json("failures/never.png.json")
        assert failure is not None and failure["error"]["code"] == "SUBMIT_INTERRUPTED"
        assert failure["error"]["task"] == "submit"
        assert stack.read_json("results/never.png.json") == failure
        assert stack.sandbox.job_count() == 0 and stack.objects("outbox/") == {}
        assert reconcile(bridge, now=expired + LATER).items == []
