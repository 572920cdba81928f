"""GCS outputs written by CloudConvert itself (``export/google-cloud-storage``), only for a rule
that opts in with ``hand_over_account: true``: the provider is handed the dedicated export key
(CONVBRIDGE_GCS_EXPORT_KEY_SECRET), never the signing key, and the grant says it is not scoped.
Without the opt-in the output is relayed, as before. The sandbox runs the export against
fake-gcs-server with exactly the key the task carried."""

from __future__ import annotations

import pytest

from convbridge.planner import plan_route
from convbridge.providers.cloudconvert import CloudConvert
from convbridge.storage.gcs import GcsStorage
from devstack.harness.gcs import GcsHarness
from devstack.stack import DevStack
from tests.conftest import png_bytes

KEY = "inbox/native/photo 1.png"


def convert(stack: DevStack) -> dict[str, object]:
    stack.upload(KEY, png_bytes())
    summary = stack.trigger(stack.event_for(KEY))
    stack.wait()
    assert summary["counts"] == {"submitted": 1}, summary
    record = stack.read_json("results/native/photo 1.png.json")
    assert record is not None
    return record


def test_an_opted_in_rule_has_cloudconvert_export_with_the_dedicated_key() -> None:
    harness = GcsHarness(hand_over_account=True)
    with DevStack(storage=harness) as stack:
        record = convert(stack)
        assert record["status"] == "finished" and record["route"] == "native", record
        (job,) = stack.sandbox.jobs()
        tasks = {t["operation"]: t for t in job["tasks"]}
        assert set(tasks) == {"import/url", "convert", "export/google-cloud-storage"}
        export = tasks["export/google-cloud-storage"]
        assert export["status"] == "finished"
        payload = export["payload"]
        assert payload["bucket"] == stack.bucket
        assert payload["file"] == "outbox/native/photo 1.png.pdf"
        assert payload["project_id"] == harness.export_key["project_id"]
        assert payload["client_email"] == harness.export_key["client_email"]
        assert payload["client_email"] != harness.key["client_email"]
        assert payload["private_key"] is None  # hidden by the sandbox, as by CloudConvert
        blob = harness.client.bucket(stack.bucket).get_blob("outbox/native/photo 1.png.pdf")
        assert blob is not None and blob.download_as_bytes().startswith(b"%PDF")
        outputs = record["outputs"]
        assert isinstance(outputs, list) and outputs[0]["size"] == blob.size
        # the task sets no metadata: the rule's output prefix keeps the output from looping
        assert not (blob.metadata or {})
        assert stack.trigger(stack.event_for("outbox/native/photo 1.png.pdf"))["counts"] == {
            "skipped": 1}


def test_without_the_opt_in_the_output_is_relayed() -> None:
    with DevStack(storage=GcsHarness()) as stack:
        record = convert(stack)
        assert record["status"] == "finished" and record["route"] == "relay", record
        (job,) = stack.sandbox.jobs()
        assert {t["operation"] for t in job["tasks"]} == {"import/url", "convert", "export/url"}


def test_the_plan_hands_over_the_key_only_with_the_opt_in() -> None:
    assert plan_route(GcsStorage, CloudConvert, "presigned_url").route == "relay"
    opted = plan_route(GcsStorage, CloudConvert, "presigned_url", hand_over_account=True)
    assert (opted.route, opted.write_grant) == ("native", "gcs_service_account")


@pytest.mark.parametrize("configured", [False, True], ids=["no-export-key", "signing-key"])
def test_an_opted_in_rule_without_a_dedicated_key_is_relayed(configured: bool) -> None:
    """No export key, or one that is the signing key's account: nothing is handed over."""
    harness = GcsHarness(hand_over_account=True)
    if configured:
        harness.export_key = harness.key
    env = {} if configured else {"CONVBRIDGE_GCS_EXPORT_KEY_SECRET": ""}
    with DevStack(storage=harness, env=env) as stack:
        record = convert(stack)
        assert record["status"] == "finished" and record["route"] == "relay", record
        (job,) = stack.sandbox.jobs()
        assert "export/google-cloud-storage" not in {t["operation"] for t in job["tasks"]}
