"""The provider adapters against the sandbox over real HTTP, where the real services answer in
ways the adapters once misread: CloudConvert v1's 503 for a failed conversion, FreeConvert's
result shapes, answers lost after a job was made, key scopes and the callback time limit."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from PIL import Image

from convbridge.model import ConversionSpec, Grant, JobSpec, ObjectRef, OutputTarget
from convbridge.providers.base import CALLBACK_QUERY
from convbridge.providers.cloudconvert_v1 import CloudConvertV1
from convbridge.providers.freeconvert import FreeConvert, parse_job
from devstack.sandbox import Faults, Sandbox

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
        headers = {CALLBACK_QUERY: urlencode({"token": TOKEN, "id": process_id, "url": url,
                                              "step": "error"})}
        accepted = adapter.accept_callback(headers, b"")
        assert accepted is not None
        outcome = adapter.confirm(accepted, headers)
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
