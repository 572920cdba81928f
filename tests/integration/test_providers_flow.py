"""S3 (moto) -> FreeConvert v1 / Online-Convert v2 / CloudConvert v1 -> S3 over real HTTP:
the sandbox's dialects, the real trigger and webhook handlers, and hostile callbacks that must
write nothing. One stack per provider, shared by its tests."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from PIL import Image

from convbridge.context import JobContext, sign_context
from devstack.harness.base import DEFAULT_RULES
from devstack.sandbox.onlineconvert import ERROR_CODES as ONLINECONVERT_ERRORS
from devstack.stack import DevStack
from tests.conftest import png_bytes
from tests.integration.test_cloudconvert_fidelity import PAGED_RULES, tiff_pages

PROVIDERS = ["freeconvert", "onlineconvert", "cloudconvert_v1"]
#: Online-Convert writes S3 outputs itself (amazons3 output target, STS session); the others
#: hand back a download URL for the relay
ROUTES = {"freeconvert": "relay", "onlineconvert": "native", "cloudconvert_v1": "relay"}
#: the code each dialect reports for an unreadable image, in its own field
FAILURE = {"freeconvert": ("convert", "CONVERSION_FAILED"),
           "onlineconvert": ("conversion", str(ONLINECONVERT_ERRORS["CONVERSION_FAILED"])),
           "cloudconvert_v1": ("convert", "422")}
GOOD, BROKEN = "inbox/a/photo 1.png", "inbox/broken.png"


@dataclass
class Flow:
    provider: str
    stack: DevStack
    summary: dict[str, Any]
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # source key -> job

    def callback(self, *, query: str = "", body: bytes = b"", method: str = "POST",
                 headers: dict[str, str] | None = None) -> httpx.Response:
        assert self.stack.webhook is not None
        url = f"{self.stack.webhook.url}/callbacks/{self.provider}"
        return httpx.request(method, f"{url}?{query}" if query else url, content=body,
                             headers={"Content-Type": "application/json", **(headers or {})})

    def written(self) -> tuple[dict[str, int], dict[str, Any] | None, dict[str, Any] | None]:
        return (self.stack.objects(), self.stack.read_json("results/a/photo 1.png.json"),
                self.stack.read_json("failures/broken.png.json"))


@pytest.fixture(scope="module", params=PROVIDERS)
def flow(request: pytest.FixtureRequest) -> Iterator[Flow]:
    provider = request.param
    rules = DEFAULT_RULES.replace("provider: cloudconvert", f"provider: {provider}") % {
        "storage": "s3", "location": "convbridge-demo", "read_grant": "presigned_url"}
    with DevStack(rules_text=rules) as stack:
        stack.upload(GOOD, png_bytes())
        stack.upload(BROKEN, b"\x89PNG\r\n\x1a\nnot an image at all")
        summary = stack.trigger({"Records": [r for key in (GOOD, BROKEN)
                                             for r in stack.s3_event(key)["Records"]]})
        stack.wait()
        by_id = {job["id"]: job for job in stack.sandbox.provider_jobs(provider)}
        ids = {o["object"].split("/", 3)[-1]: o["job_id"] for o in summary["objects"]}
        yield Flow(provider, stack, summary, {key: by_id[ids[key]] for key in (GOOD, BROKEN)})


def test_an_upload_becomes_a_pdf_and_a_finished_record(flow: Flow) -> None:
    assert flow.summary["counts"] == {"submitted": 2}
    record = flow.stack.read_json("results/a/photo 1.png.json")
    assert record is not None and record["status"] == "finished"
    assert (record["provider"], record["route"]) == (flow.provider, ROUTES[flow.provider])
    assert record["job_id"] == flow.jobs[GOOD]["id"]
    output = record["outputs"][0]
    assert output["key"] == "outbox/a/photo 1.png.pdf"
    body = flow.stack.s3.get_object(Bucket=flow.stack.bucket, Key=output["key"])["Body"].read()
    assert body.startswith(b"%PDF") and len(body) == output["size"]
    assert flow.stack.read_json("failures/a/photo 1.png.json") is None


def test_corrupt_input_gets_a_failure_report_with_the_providers_own_code(flow: Flow) -> None:
    report = flow.stack.read_json("failures/broken.png.json")
    assert report is not None and report["status"] == "failed"
    assert report["provider"] == flow.provider and report["job_id"] == flow.jobs[BROKEN]["id"]
    assert (report["error"]["task"], report["error"]["code"]) == FAILURE[flow.provider]
    job = flow.jobs[BROKEN]
    shown = {"freeconvert": lambda: job["result"]["msg"],
             "onlineconvert": lambda: job["errors"][0]["message"],
             "cloudconvert_v1": lambda: job["message"]}[flow.provider]()
    assert report["error"]["message"] == shown and "cannot identify image" in shown
    assert not any(key.startswith("outbox/broken") for key in flow.stack.objects("outbox/"))


def test_hostile_callbacks_are_refused_and_write_nothing(flow: Flow) -> None:
    before = flow.written()
    cases = {"freeconvert": freeconvert_cases, "onlineconvert": onlineconvert_cases,
             "cloudconvert_v1": cloudconvert_v1_cases}[flow.provider](flow)
    assert {"forged", "tampered", "unsigned", "wrong-token"} <= set(cases)
    for name, send in cases.items():
        answer = send()
        assert answer.status_code == 401, (name, answer.status_code, answer.text)
        assert flow.written() == before, name


def test_a_replayed_genuine_callback_writes_nothing_twice(
        flow: Flow, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    before = flow.written()
    answer = {"freeconvert": freeconvert_replay, "onlineconvert": onlineconvert_replay,
              "cloudconvert_v1": cloudconvert_v1_replay}[flow.provider](flow)
    assert answer.status_code in (200, 202), answer.text
    flow.stack.wait()
    assert flow.written() == before
    # the per-job token (the signed context) is a credential: the bridge never logs it
    token = flow.jobs[GOOD].get("tag") or job_token(flow.jobs[GOOD])
    bridge_lines = [r.getMessage() for r in caplog.records if r.name.startswith("convbridge")]
    assert bridge_lines and not any(token in line for line in bridge_lines)


# ----------------------------------------------------------------------------- helpers


def our_token(flow: Flow, key: str = "inbox/never.png") -> str:
    """A context the bridge could have signed itself, for a job it never started."""
    context = JobContext.new(rule="images-to-pdf", storage="s3", location=flow.stack.bucket,
                             key=key, version=None, output_key="outbox/never.png.pdf",
                             route="relay")
    return sign_context(context, flow.stack.context_key.encode())


def foreign_token(flow: Flow) -> str:
    context = JobContext.new(rule="images-to-pdf", storage="s3", location="attacker-bucket",
                             key="inbox/x.png", version=None, output_key="outbox/x.png.pdf",
                             route="relay")
    return sign_context(context, b"a" * 48)


def tampered(token: str) -> str:
    body, _, mac = token.rpartition(".")
    return f"{body}.{'0' if mac[0] != '0' else '1'}{mac[1:]}"


# FreeConvert: signed webhooks


def freeconvert_body(job: dict[str, Any], event: str = "job.success") -> bytes:
    return json.dumps({"event": event, "job": job}, separators=(",", ":")).encode()


def fc_signature(flow: Flow, body: bytes) -> dict[str, str]:
    signature = hmac.new(flow.stack.signing_secret.encode(), body, hashlib.sha256).hexdigest()
    return {"FreeConvert-Signature": signature}


def freeconvert_cases(flow: Flow) -> dict[str, Any]:
    forged_job = {**flow.jobs[GOOD], "id": "forged-job", "tag": our_token(flow)}
    forged = freeconvert_body(forged_job)
    genuine = freeconvert_body(flow.jobs[GOOD])
    evil = genuine.replace(flow.jobs[GOOD]["id"].encode(), b"another-job")
    foreign = freeconvert_body({**forged_job, "tag": foreign_token(flow)})
    return {
        "unsigned": lambda: flow.callback(body=forged),
        "forged": lambda: flow.callback(body=forged, headers={
            "FreeConvert-Signature": hmac.new(b"guess", forged, hashlib.sha256).hexdigest()}),
        "tampered": lambda: flow.callback(body=evil, headers=fc_signature(flow, genuine)),
        # a genuine signature around a context the bridge did not sign
        "wrong-token": lambda: flow.callback(body=foreign, headers=fc_signature(flow, foreign)),
    }


def freeconvert_replay(flow: Flow) -> httpx.Response:
    body = freeconvert_body(flow.jobs[GOOD])
    return flow.callback(body=body, headers=fc_signature(flow, body))


# Online-Convert: unsigned body, token in the callback URL, outcome re-fetched


def job_token(job: dict[str, Any]) -> str:
    return parse_qs(urlsplit(job["callback"]).query)["token"][0]


def onlineconvert_unsettled_job(flow: Flow) -> dict[str, Any]:
    """A job of ours that never calls back, so it is still unsettled."""
    base = flow.stack.sandbox.url + "/onlineconvert/v2"
    created = httpx.post(f"{base}/jobs", headers={"X-Oc-Api-Key": flow.stack.api_key}, json={
        "input": [{"type": "remote", "source": "http://127.0.0.1:1/x.png"}],
        "conversion": [{"target": "pdf"}]}).json()
    flow.stack.sandbox.wait_idle()
    job: dict[str, Any] = httpx.get(f"{base}/jobs/{created['id']}",
                                    headers={"X-Oc-Api-Key": flow.stack.api_key}).json()
    return job


def onlineconvert_cases(flow: Flow) -> dict[str, Any]:
    genuine = flow.jobs[GOOD]
    token = job_token(genuine)
    other = onlineconvert_unsettled_job(flow)
    body = json.dumps(genuine).encode()

    def post(job: dict[str, Any], query: str) -> httpx.Response:
        return flow.callback(query=query, body=json.dumps(job).encode())

    return {
        "unsigned": lambda: flow.callback(body=body),
        "forged": lambda: flow.callback(query=urlencode({"token": foreign_token(flow)}),
                                        body=body),
        "tampered": lambda: flow.callback(query=urlencode({"token": tampered(token)}),
                                          body=body),
        # a genuine token of one job used to settle another of our jobs
        "wrong-token": lambda: post(other, urlencode({"token": token})),
        "duplicate-token": lambda: flow.callback(
            query=f"{urlencode({'token': token})}&token=x", body=body),
    }


def onlineconvert_replay(flow: Flow) -> httpx.Response:
    genuine = flow.jobs[GOOD]
    return flow.callback(query=urlencode({"token": job_token(genuine)}),
                         body=json.dumps(genuine).encode())


# CloudConvert v1: GET ?id=&url=&step= with the token, process re-read


def v1_query(process: dict[str, Any], token: str, **changes: str) -> str:
    return urlencode({"token": token, "id": process["id"], "url": process["url"],
                      "step": "finished", **changes})


def v1_unsettled_process(flow: Flow) -> dict[str, Any]:
    base = flow.stack.sandbox.url + "/v1"
    created = httpx.post(f"{base}/process", json={
        "apikey": flow.stack.api_key, "inputformat": "png", "outputformat": "pdf"}).json()
    url = "http:" + created["url"]
    httpx.post(url, json={"input": "download", "file": "http://127.0.0.1:1/x.png",
                          "outputformat": "pdf", "tag": "someone-else"})
    flow.stack.sandbox.wait_idle()
    process: dict[str, Any] = httpx.get(url).json()
    return process


def cloudconvert_v1_cases(flow: Flow) -> dict[str, Any]:
    process = flow.jobs[GOOD]
    token = process["tag"]
    other = v1_unsettled_process(flow)

    def get(query: str) -> httpx.Response:
        return flow.callback(method="GET", query=query)

    no_token = urlencode({"id": process["id"], "url": process["url"], "step": "finished"})
    return {
        "unsigned": lambda: get(no_token),
        "forged": lambda: get(v1_query(process, foreign_token(flow))),
        "tampered": lambda: get(v1_query(process, tampered(token))),
        "elsewhere": lambda: get(v1_query(process, token, url="//127.0.0.2:9/v1/process/x")),
        # a genuine token of one process used to settle another of our processes
        "wrong-token": lambda: get(v1_query(other, token)),
    }


def cloudconvert_v1_replay(flow: Flow) -> httpx.Response:
    process = flow.jobs[GOOD]
    return flow.callback(method="GET", query=v1_query(process, process["tag"]))


# -- FreeConvert: a conversion that gives several files ----------------------------------------


def test_freeconvert_a_three_page_scan_lands_as_three_pngs_in_the_output_folder() -> None:
    """FreeConvert exports several files individually (seed: ``archive_multiple_files`` off),
    each listed in the export task's result; every one is relayed into the output folder."""
    rules = PAGED_RULES.replace("provider: cloudconvert", "provider: freeconvert") % {
        "location": "convbridge-demo"}
    with DevStack(rules_text=rules) as stack:
        stack.upload("inbox/scan.tif", tiff_pages(3))
        assert stack.trigger(stack.s3_event("inbox/scan.tif"))["counts"] == {"submitted": 1}
        stack.wait()
        record = stack.read_json("results/scan.tif.json")
        outputs = {key: stack.harness.read_bytes(key) for key in stack.objects("outbox/")}
    assert record is not None and record["status"] == "finished", record
    assert record["route"] == "relay"
    keys = [o["key"] for o in record["outputs"]]
    assert len(keys) == 3 and sorted(outputs) == sorted(keys)
    assert all(key.startswith("outbox/scan.tif.png/") for key in keys)
    images = [Image.open(io.BytesIO(outputs[key] or b"")) for key in keys]
    assert [(image.format, image.size) for image in images] == [("PNG", (40, 30))] * 3
    assert len(set(outputs.values())) == 3  # each page its own image
