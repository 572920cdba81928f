"""The Azure Blob -> CloudConvert v2 -> Azure Blob flow over real HTTP: Azurite (which enforces
SAS), moto for the AWS side, the provider sandbox, and the real Azure trigger and webhook
handlers behind local Function URLs. Event Grid deliveries are posted as Event Grid would send
them, the endpoint code in the URL, so authentication is exercised on every test.

Azurite must start: if it cannot, these tests fail saying how to install it (``make servers``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import convbridge
from convbridge.model import source_tag
from devstack.harness.azure import AzureHarness
from devstack.servers_azure import AzuriteServer
from devstack.stack import DevStack
from tests.conftest import png_bytes

ROOT = Path(__file__).resolve().parents[2]


def azure_stack(azurite: AzuriteServer, **options: Any) -> DevStack:
    # a fresh container per stack: one Azurite serves the whole module
    harness = AzureHarness(f"t-{uuid.uuid4().hex[:12]}", server=azurite)
    return DevStack(storage=harness, **options)


@pytest.fixture
def stack(azurite: AzuriteServer) -> Iterator[DevStack]:
    with azure_stack(azurite) as running:
        yield running


@pytest.fixture
def sas_stack(azurite: AzuriteServer) -> Iterator[DevStack]:
    with azure_stack(azurite, read_grant="sas") as running:
        yield running


def harness(stack: DevStack) -> AzureHarness:
    assert isinstance(stack.harness, AzureHarness)
    return stack.harness


def deliver(stack: DevStack, key: str, *, schema: str = "eventgrid") -> dict[str, Any]:
    answer = stack.trigger(harness(stack).event_for(key, schema=schema))
    stack.wait()
    return answer


def operations(stack: DevStack, index: int = 0) -> dict[str, dict[str, Any]]:
    return {t["operation"]: t for t in stack.sandbox.jobs()[index]["tasks"]}


@pytest.mark.parametrize("schema", ["eventgrid", "cloudevents"])
def test_an_upload_becomes_a_pdf_relayed_with_the_loop_guard_marker_and_source_tag(
        stack: DevStack, schema: str) -> None:
    """CloudConvert's export/azure/blob takes no metadata (the sandbox refuses it, as the
    official SDKs list none), so the bridge relays Azure outputs and tags them itself."""
    key = "inbox/a/my photo+1 ü.png"
    stack.upload(key, png_bytes())
    answer = deliver(stack, key, schema=schema)
    assert answer["http_status"] == 200 and answer["counts"] == {"submitted": 1}
    record = stack.read_json("results/a/my photo+1 ü.png.json")
    assert record is not None
    assert record["status"] == "finished" and record["route"] == "relay"
    assert record["job_id"] == answer["objects"][0]["job_id"]
    assert record["source"]["location"] == harness(stack).location
    output = record["outputs"][0]
    assert output["key"] == "outbox/a/my photo+1 ü.png.pdf"
    blob = harness(stack).container_client.get_blob_client(output["key"])
    props = blob.get_blob_properties()
    assert props.metadata == {"convbridge_output": "images-to-pdf",
                              "convbridge_source": source_tag(harness(stack).location, key)}
    assert output["size"] == props.size > 0
    assert blob.download_blob().readall().startswith(b"%PDF")
    assert stack.read_json("failures/a/my photo+1 ü.png.json") is None
    assert set(operations(stack)) == {"import/url", "convert", "export/url"}


def test_a_sas_read_grant_is_imported_with_import_azure_blob(sas_stack: DevStack) -> None:
    sas_stack.upload("inbox/b.png", png_bytes(mode="RGBA"))
    deliver(sas_stack, "inbox/b.png", schema="cloudevents")
    record = sas_stack.read_json("results/b.png.json")
    assert record is not None and record["status"] == "finished"
    tasks = operations(sas_stack)
    assert set(tasks) == {"import/azure/blob", "convert", "export/url"}
    imported = tasks["import/azure/blob"]["payload"]
    assert (imported["storage_account"], imported["container"], imported["blob"]) == (
        "devstoreaccount1", harness(sas_stack).container, "inbox/b.png")
    assert imported["sas_token"] is None  # hidden in the API's answers, as CloudConvert does


def test_a_corrupt_blob_gets_a_failure_report_with_the_providers_code(stack: DevStack) -> None:
    stack.upload("inbox/broken.png", b"\x89PNG\r\n\x1a\nnot an image at all")
    deliver(stack, "inbox/broken.png")
    report = stack.read_json("failures/broken.png.json")
    assert report is not None
    assert report["status"] == "failed" and report["provider"] == "cloudconvert"
    assert report["error"]["task"] == "convert"
    assert report["error"]["code"] == "CONVERSION_FAILED"
    assert report["job_id"]
    record = stack.read_json("results/broken.png.json")
    assert record is not None and record["status"] == "failed"
    assert stack.objects("outbox/") == {}


def test_a_new_version_replaces_its_own_output_through_the_relay(stack: DevStack) -> None:
    # the relay may replace the first output: it tagged it with this same source
    stack.upload("inbox/c.png", png_bytes())
    deliver(stack, "inbox/c.png")
    first = harness(stack).read_bytes("outbox/c.png.pdf") or b""
    assert first.startswith(b"%PDF") and "export/url" in operations(stack)
    stack.upload("inbox/c.png", png_bytes(size=(300, 200)))
    deliver(stack, "inbox/c.png")
    record = stack.read_json("results/c.png.json")
    assert record is not None and record["status"] == "finished" and record["route"] == "relay"
    second = harness(stack).read_bytes("outbox/c.png.pdf") or b""
    assert second.startswith(b"%PDF") and second != first
    assert "export/url" in operations(stack, 1)


def test_a_blob_the_bridge_did_not_make_is_never_overwritten(stack: DevStack) -> None:
    stack.upload("outbox/f.png.pdf", b"the user's own file")
    stack.upload("inbox/f.png", png_bytes())
    deliver(stack, "inbox/f.png")
    report = stack.read_json("failures/f.png.json")
    assert report is not None and report["status"] == "failed"
    assert (report["route"], report["error"]["code"]) == ("relay", "OUTPUT_COLLISION")
    assert harness(stack).read_bytes("outbox/f.png.pdf") == b"the user's own file"


def test_duplicate_deliveries_start_one_job(stack: DevStack) -> None:
    stack.upload("inbox/d.png", png_bytes())
    event = harness(stack).event_for("inbox/d.png")
    first = stack.trigger(event)
    again = stack.trigger(event)  # Event Grid redelivers when an answer is lost
    twice = harness(stack).post(stack, json.dumps([event, event]).encode())  # or batches a copy
    stack.wait()
    assert first["counts"] == {"submitted": 1}
    assert again["counts"] == {"duplicate": 1}
    assert twice.status_code == 200 and twice.json()["counts"] == {"duplicate": 2}
    assert len(stack.sandbox.jobs()) == 1
    record = stack.read_json("results/d.png.json")
    assert record is not None and record["status"] == "finished"


def test_the_bridges_own_outputs_start_nothing(stack: DevStack) -> None:
    stack.upload("inbox/e.png", png_bytes())
    deliver(stack, "inbox/e.png")
    answer = deliver(stack, "outbox/e.png.pdf")
    assert answer["counts"] == {"skipped": 1}
    assert "loop guard" in answer["objects"][0]["reason"]
    assert len(stack.sandbox.jobs()) == 1


def test_the_event_grid_schema_handshake_echoes_the_validation_code(stack: DevStack) -> None:
    body = (ROOT / "tests/events/event_grid_subscription_validation.json").read_bytes()
    answer = harness(stack).post(stack, body, headers={"aeg-event-type": "SubscriptionValidation"})
    assert answer.status_code == 200
    assert answer.json() == {"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"}
    assert harness(stack).post(stack, body, code="wrong" * 8).status_code == 401


def test_the_cloudevents_handshake_allows_the_origin_asked_for(stack: DevStack) -> None:
    origin = {"WebHook-Request-Origin": "eventgrid.azure.net"}
    answer = harness(stack).post(stack, b"", method="OPTIONS", headers=origin)
    assert answer.status_code == 200
    assert answer.headers["WebHook-Allowed-Origin"] == "eventgrid.azure.net"
    assert answer.headers["WebHook-Allowed-Rate"] == "*"
    refused = harness(stack).post(stack, b"", method="OPTIONS", headers=origin, code="")
    assert refused.status_code == 401 and "WebHook-Allowed-Origin" not in refused.headers
    assert harness(stack).post(stack, b"", method="OPTIONS").status_code == 400


def test_unauthenticated_malformed_and_oversized_deliveries_start_nothing(
        stack: DevStack) -> None:
    stack.upload("inbox/f.png", png_bytes())
    azure = harness(stack)
    body = json.dumps([azure.event_for("inbox/f.png")]).encode()
    good = azure.endpoint_code
    before = stack.objects()
    refusals = {
        "no code": azure.post(stack, body, code=""),
        "wrong code": azure.post(stack, body, code=good[:-1] + ("A" if good[-1] != "A" else "B")),
        "code prefix": azure.post(stack, body, code=good[:-4]),
        "code in a header": azure.post(stack, body, code="", headers={"x-functions-key": good}),
        "malformed": azure.post(stack, b'[{"eventType": "Microsoft.Storage.BlobCreated",'),
        "oversized": azure.post(stack, b"[" + b" " * (1024 * 1024) + b"]"),
        "wrong method": azure.post(stack, body, method="PUT"),
    }
    statuses = {name: answer.status_code for name, answer in refusals.items()}
    assert statuses == {"no code": 401, "wrong code": 401, "code prefix": 401,
                        "code in a header": 401, "malformed": 400, "oversized": 413,
                        "wrong method": 405}
    # a repeated parameter might be read differently by something in front of the function
    assert azure.post(stack, body, query=f"code={good}&code={good}").status_code == 401
    stack.wait()
    assert stack.sandbox.jobs() == []
    assert stack.objects() == before


def test_no_secret_reaches_any_log_line(stack: DevStack, capfd: pytest.CaptureFixture[str],
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    stack.upload("inbox/s.png", png_bytes())
    stack.upload("inbox/t.png", b"corrupt")
    deliver(stack, "inbox/s.png")
    deliver(stack, "inbox/t.png", schema="cloudevents")
    harness(stack).post(stack, b"[]", code="x" * 40)
    out, err = capfd.readouterr()
    logged = out + err + caplog.text
    assert "submitted" in logged  # the capture did see the bridge's logs
    azure = harness(stack)
    for secret in (azure.endpoint_code, azure.server.account_key, stack.api_key,
                   stack.signing_secret, stack.context_key):
        assert secret not in logged
    assert not re.search(r"[?&]sig=(?!REDACTED)", logged)


def test_the_s3_trigger_and_the_webhook_do_not_import_the_azure_sdk() -> None:
    code = """
import importlib.util, sys
for name in ("s3_trigger", "webhook"):
    path = f"functions/{name}/app.py"
    spec = importlib.util.spec_from_file_location(f"fn_{name}", path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
import convbridge.providers.cloudconvert  # the webhook's provider, loaded on first callback
print(sorted(m for m in sys.modules if m == "azure" or m.startswith("azure.")))
"""
    # the convbridge under test, wherever it was imported from (an editable install, or
    # PYTHONPATH)
    package_root = Path(convbridge.__file__).resolve().parents[1]
    env = {"POWERTOOLS_SERVICE_NAME": "convbridge", "AWS_DEFAULT_REGION": "us-east-1",
           "PATH": "/usr/bin:/bin", "PYTHONPATH": str(package_root)}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
