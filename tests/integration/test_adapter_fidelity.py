"""The provider adapters against the sandbox over real HTTP, where the real services answer in
ways the adapters once misread: CloudConvert v1's 503 for a failed conversion, FreeConvert's
result shapes, answers lost after a job was made, key scopes and the callback time limit."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from PIL import Image

from convbridge.errors import ProviderOutcomeUnknown, ProviderRejected
from convbridge.model import (
    CallbackRequest,
    ConversionSpec,
    Grant,
    JobSpec,
    ObjectRef,
    OutputTarget,
)
from convbridge.providers import PROVIDERS
from convbridge.providers.base import Provider
from convbridge.providers.cloudconvert import CloudConvert
from convbridge.providers.cloudconvert_v1 import CloudConvertV1
from convbridge.providers.freeconvert import FreeConvert, parse_job
from devstack.harness.base import DEFAULT_RULES
from devstack.sandbox import Faults, Sandbox
from devstack.sandbox.onlineconvert import CALLBACK_TIMING
from devstack.stack import DevStack

API_KEY = "fidelity-api-key"
SIGNING_SECRET = "fidelity-signing-secret"
TOKEN = "CONTEXT-TOKEN"
EXPIRES = datetime(2030, 1, 1, tzinfo=UTC)
#: nothing listens there: callbacks are refused at once and the tests read the job themselves
UNREACHABLE_HOOK = "http://127.0.0.1:9/callbacks"


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10, trust_env=False) as client:
        yield client


def png_bytes() -> bytes:
    # not tests.conftest's: the cloudconvert SDK installs a package named "tests"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 90)).save(buffer, format="PNG")
    return buffer.getvalue()


def source_url(sandbox: Sandbox, tmp_path: Path) -> str:
    (tmp_path / "photo.png").write_bytes(png_bytes())
    return sandbox.serve_file(tmp_path / "photo.png", "photo.png")


def relay_spec(url: str, provider: str, *, output_format: str = "pdf") -> JobSpec:
    read = Grant(kind="presigned_url", storage="s3", location="bkt", key="inbox/photo.png",
                 scope="read", expires_at=EXPIRES, url=url)
    return JobSpec(source=ObjectRef("s3", "bkt", "inbox/photo.png"), rule="images",
                   conversion=ConversionSpec("png", output_format), route="relay",
                   read_grant=read, write_grant=None,
                   output=OutputTarget("s3", "bkt", f"outbox/photo.{output_format}"),
                   context_token=TOKEN, webhook_url=f"{UNREACHABLE_HOOK}/{provider}",
                   filename="photo.png")


# -- CloudConvert v1: a 503 from the process URL is the conversion's failure ---------------------


def test_a_v1_process_answering_503_is_a_failure_read_once_not_retried(
        tmp_path: Path, http: httpx.Client) -> None:
    """Seed 001: 503 on a process URL means no conversion host was available, the conversion
    failed; the process URL is one-time, so asking it again cannot help."""
    faults = Faults(fail_operations=frozenset({"convert"}), host_unavailable_failures=True)
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET, faults=faults) as sandbox:
        adapter = CloudConvertV1(api_key=API_KEY, signing_secret=None,
                                 base_url=sandbox.url + "/v1", http=http)
        process_id = adapter.start(relay_spec(source_url(sandbox, tmp_path), adapter.name))
        sandbox.wait_idle()
        url = adapter.process_url(process_id).split(":", 1)[1]  # protocol-relative, as v1
        request = CallbackRequest(b"", method="GET", query=urlencode(
            {"token": TOKEN, "id": process_id, "url": url, "step": "error"}))
        accepted = adapter.accept_callback(request)
        assert accepted is not None
        outcome = adapter.confirm(accepted, request)
        reads = [r for r in sandbox.requests() if r["method"] == "GET"]
    assert outcome is not None and outcome.status == "failed"
    assert (outcome.job_id, outcome.failed_task, outcome.code) == (process_id, "convert", "503")
    assert outcome.message
    assert [r["status"] for r in reads] == [503]


# -- FreeConvert: outputs named as the bridge asked ----------------------------------------------


def test_a_freeconvert_relay_output_is_named_as_the_output_not_by_file_id(
        tmp_path: Path, http: httpx.Client) -> None:
    """Without a ``filename`` on export/url, FreeConvert names the download by its file id,
    so a multi-file result would land under meaningless names."""
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET) as sandbox:
        adapter = FreeConvert(api_key=API_KEY, signing_secret=SIGNING_SECRET,
                              base_url=sandbox.url + "/freeconvert/v1", http=http)
        job_id = adapter.start(relay_spec(source_url(sandbox, tmp_path), adapter.name))
        sandbox.wait_idle()
        job = http.get(f"{adapter.base_url}/process/jobs/{job_id}",
                       headers={"Authorization": f"Bearer {API_KEY}"}).json()
    outcome = parse_job(job, event="job.success")
    assert outcome.status == "finished"
    [output] = outcome.outputs
    assert output.filename == "photo.pdf"
    assert output.url is not None and output.url.endswith("/photo.pdf")


# -- a create whose answer was lost after the job was made --------------------------------------

LOST_ANSWER = Faults(fail_after_create_rate=1.0, fail_after_create_status=503)


def _adapter(name: str, sandbox: Sandbox, http: httpx.Client) -> Provider:
    # Online-Convert tries a refused callback ten times, 10 s apart; these tests read the job
    # themselves, so its retries to the unreachable hook need not keep the sandbox busy
    sandbox.set_onlineconvert_callback_timing(replace(CALLBACK_TIMING, retry_seconds=0.01))
    return PROVIDERS.load(name)(api_key=API_KEY, signing_secret=SIGNING_SECRET,
                                base_url=sandbox.base_url(name), http=http)


@pytest.mark.parametrize("name", ["cloudconvert", "freeconvert"])
def test_a_create_answered_503_after_the_job_was_made_finds_that_one_job(
        name: str, tmp_path: Path, http: httpx.Client) -> None:
    """Providers that search by tag look before they re-send: one upload, one job."""
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET, faults=LOST_ANSWER) as sandbox:
        adapter = _adapter(name, sandbox, http)
        job_id = adapter.start(relay_spec(source_url(sandbox, tmp_path), name))
        jobs = sandbox.provider_jobs(name)
        creates = [r for r in sandbox.requests() if r["method"] == "POST"]
    assert [job["id"] for job in jobs] == [job_id]
    assert [r["status"] for r in creates] == [503]


@pytest.mark.parametrize("name", ["onlineconvert", "cloudconvert_v1"])
def test_a_create_answered_503_is_not_resent_where_the_provider_cannot_search(
        name: str, tmp_path: Path, http: httpx.Client) -> None:
    """Online-Convert and CloudConvert v1 cannot find a job by its context: after an answer
    that does not prove no job was made, the create is reported, never sent again."""
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET, faults=LOST_ANSWER) as sandbox:
        adapter = _adapter(name, sandbox, http)
        recorded: list[str] = []
        with pytest.raises(ProviderOutcomeUnknown, match="503"):
            adapter.start(relay_spec(source_url(sandbox, tmp_path), name), recorded.append)
        sandbox.wait_idle()
        requests = sandbox.requests()
        deliveries = sandbox.deliveries()
    assert [(r["method"], r["status"]) for r in requests] == [("POST", 503)]
    # the job it made was created held (Online-Convert) or never started (v1): it cannot run
    assert recorded == [] and deliveries == []


@pytest.mark.parametrize("name", ["onlineconvert", "cloudconvert_v1"])
def test_throttled_creates_are_sent_again_and_make_one_job(
        name: str, tmp_path: Path, http: httpx.Client) -> None:
    """A 429 proves no job was made, so asking again is safe everywhere."""
    faults = Faults(fail_rate_429=0.6, retry_after_seconds=0, seed=3)
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET, faults=faults) as sandbox:
        adapter = _adapter(name, sandbox, http)
        job_id = adapter.start(relay_spec(source_url(sandbox, tmp_path), name))
        sandbox.set_faults(Faults())
        sandbox.wait_idle()
        statuses = [r["status"] for r in sandbox.requests() if r["method"] == "POST"]
        jobs = sandbox.provider_jobs(name)
    assert [job["id"] for job in jobs] == [job_id]
    assert 429 in statuses and statuses.count(429) == len(statuses) - (
        2 if name == "cloudconvert_v1" else 1)



def test_an_upload_whose_create_answer_was_lost_gets_one_job_and_a_failure_report() -> None:
    """What a user sees: one Online-Convert job at most, and a failure report saying the
    outcome is unknown, instead of duplicates or silent redelivery."""
    rules = DEFAULT_RULES.replace("provider: cloudconvert", "provider: onlineconvert") % {
        "storage": "s3", "location": "convbridge-demo", "read_grant": "presigned_url"}
    with DevStack(rules_text=rules, faults=LOST_ANSWER) as stack:
        stack.upload("inbox/photo.png", png_bytes())
        summary = stack.trigger(stack.s3_event("inbox/photo.png"))
        stack.wait()
        failure = stack.read_json("failures/photo.png.json")
        creates = [r for r in stack.sandbox.requests() if r["method"] == "POST"]
    assert summary["counts"] == {"rejected": 1}
    assert failure is not None and failure["status"] == "rejected"
    assert failure["error"]["code"] == "PROVIDER_OUTCOME_UNKNOWN"
    assert "503" in failure["error"]["message"]
    assert len(creates) == 1


# -- CloudConvert key scopes ---------------------------------------------------------------------


def _cloudconvert(sandbox: Sandbox, http: httpx.Client, *scopes: str) -> CloudConvert:
    return CloudConvert(api_key=sandbox.mint_cloudconvert_key(scopes),
                        signing_secret=SIGNING_SECRET, base_url=sandbox.url + "/v2", http=http)


def test_a_key_without_task_read_fails_the_lost_answer_lookup_naming_the_scope(
        tmp_path: Path, http: httpx.Client) -> None:
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET, faults=LOST_ANSWER) as sandbox:
        adapter = _cloudconvert(sandbox, http, "task.write")
        with pytest.raises(ProviderRejected) as caught:
            adapter.start(relay_spec(source_url(sandbox, tmp_path), adapter.name))
    assert caught.value.code == "API_KEY_SCOPE" and caught.value.status == 403
    assert "task.read" in caught.value.message and API_KEY not in caught.value.message


def test_a_key_without_task_read_fails_an_sftp_input_upload_naming_the_scope(
        http: httpx.Client) -> None:
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET) as sandbox:
        adapter = _cloudconvert(sandbox, http, "task.write")
        spec = upload_spec()
        job_id = adapter.start(spec)
        with pytest.raises(ProviderRejected) as caught:
            adapter.upload_input(job_id, spec, lambda: iter([png_bytes()]))
    assert caught.value.code == "API_KEY_SCOPE" and "task.read" in caught.value.message


def test_a_key_without_task_write_fails_the_create_naming_the_scope(
        tmp_path: Path, http: httpx.Client) -> None:
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET) as sandbox:
        adapter = _cloudconvert(sandbox, http, "task.read")
        with pytest.raises(ProviderRejected) as caught:
            adapter.start(relay_spec(source_url(sandbox, tmp_path), adapter.name))
        assert sandbox.job_count() == 0
    assert caught.value.code == "API_KEY_SCOPE" and "task.write" in caught.value.message


def test_a_key_with_task_read_and_task_write_uploads_and_converts(http: httpx.Client) -> None:
    with Sandbox(api_key=API_KEY, signing_secret=SIGNING_SECRET) as sandbox:
        adapter = _cloudconvert(sandbox, http, "task.read", "task.write")
        spec = upload_spec()
        job_id = adapter.start(spec)
        adapter.upload_input(job_id, spec, lambda: iter([png_bytes()]))
        sandbox.wait_idle()
        [job] = sandbox.jobs()
    assert (job["id"], job["status"]) == (job_id, "finished")


def upload_spec() -> JobSpec:
    """An SFTP source: it cannot sign URLs, so the bridge uploads the input itself."""
    size = len(png_bytes())
    read = Grant(kind="upload", storage="sftp", location="sftp.example", key="in/photo.png",
                 scope="read", expires_at=EXPIRES)
    return JobSpec(source=ObjectRef("sftp", "sftp.example", "in/photo.png", size=size),
                   rule="images", conversion=ConversionSpec("png", "pdf"), route="relay",
                   read_grant=read, write_grant=None,
                   output=OutputTarget("sftp", "sftp.example", "out/photo.pdf"),
                   context_token=TOKEN, webhook_url=f"{UNREACHABLE_HOOK}/cloudconvert",
                   filename="photo.png")


# -- Online-Convert's 3 s callback timeout -------------------------------------------------------

#: Online-Convert gives up on a callback attempt after 3 s
CALLBACK_LIMIT_SECONDS = 3.0


def test_online_convert_callbacks_are_answered_within_3_s_while_its_api_is_slow() -> None:
    """The webhook queues the callback after the token check and confirms it with the
    provider from the completion queue: a slow job read never delays the answer."""
    rules = DEFAULT_RULES.replace("provider: cloudconvert", "provider: onlineconvert") % {
        "storage": "s3", "location": "convbridge-demo", "read_grant": "presigned_url"}
    with DevStack(rules_text=rules) as stack:
        stack.upload("inbox/photo.png", png_bytes())
        stack.sandbox.set_faults(Faults(latency_seconds=CALLBACK_LIMIT_SECONDS + 1))
        stack.trigger(stack.s3_event("inbox/photo.png"))
        stack.wait(timeout=60)
        [job] = stack.sandbox.provider_jobs("onlineconvert")
        record = stack.read_json("results/photo.png.json")
        # the same genuine callback again, timed as the provider times it
        started = time.monotonic()
        again = httpx.post(job["callback"], content=json.dumps(job).encode(),
                           headers={"Content-Type": "application/json"}, timeout=30)
        answered = time.monotonic() - started
        stack.wait(timeout=60)
        after = stack.read_json("results/photo.png.json")
    assert record is not None and record["status"] == "finished" and record["job_id"] == job["id"]
    assert again.status_code == 202 and answered < CALLBACK_LIMIT_SECONDS
    assert after == record
