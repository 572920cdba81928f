"""Online-Convert's official Python SDK (PyPI `api2convert`), unchanged, against the sandbox: only
its `base_url` points at it. 11 checks: convert a remote URL (create, poll until done, download
through a 302 to the storage host), convert a local file (create held, upload with the per-job
token, start, poll, download), get the job and list jobs and outputs, a failed conversion's
integer error code, a wrong key refused, the seed's `X-Oc-Api-Key` header accepted alongside the
SDK's `X-Api2convert-Api-Key`, a signed callback verified with the SDK's `WebhookVerifier`
(tampering refused), callbacks unsigned unless signing is on, and a create answer lost after the
job was made (a 503) not re-sent by the SDK, leaving one job; and Online-Convert's callback
schedule: an answer later than 3 s is a failed attempt, retried; a 4xx is final. Online-Convert
has no job tags, so listing is by status only."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from api2convert import (
    Api2Convert,
    AuthenticationError,
    ConversionFailedError,
    ServerError,
    SignatureVerificationError,
)

from devstack.sandbox import Faults, Sandbox
from devstack.sandbox.onlineconvert import CALLBACK_TIMING, ERROR_CODES
from tests.sdk.conftest import API_KEY, Receiver, image_format, png

WEBHOOK_SECRET = "online-convert-webhook-secret"


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[Api2Convert]:
    sandbox.set_faults(Faults(redirect_downloads=True))
    with Api2Convert(API_KEY, base_url=sandbox.url + "/onlineconvert/v2", poll_interval=0.5,
                     poll_timeout=20, max_retries=0) as found:
        yield found
    sandbox.set_faults(Faults())


def test_convert_a_remote_url_and_download_through_a_redirect(
        sandbox: Sandbox, client: Api2Convert, tmp_path: Path) -> None:
    source = tmp_path / "remote.png"
    source.write_bytes(png())
    result = client.convert(sandbox.serve_file(source, "remote.png"), "jpg")
    assert image_format(result.contents()) == "JPEG"
    assert [d["status"] for d in sandbox.downloads()
            if d["path"] in result.url()][-2:] == [302, 200]


def test_convert_a_local_file_uploaded_with_the_job_token(
        client: Api2Convert, tmp_path: Path) -> None:
    source = tmp_path / "local.png"
    source.write_bytes(png((50, 20)))
    result = client.convert(str(source), "jpg")
    saved = result.save(str(tmp_path / "out.jpg"))
    assert image_format(Path(saved).read_bytes()) == "JPEG"


def test_get_list_and_outputs_of_a_job(
        sandbox: Sandbox, client: Api2Convert, tmp_path: Path) -> None:
    source = tmp_path / "listed.png"
    source.write_bytes(png())
    job = client.convert_async(sandbox.serve_file(source, "listed.png"), "png")
    done = client.jobs.wait(job.id)
    assert client.jobs.get(job.id).status.code == "completed" == done.status.code
    assert job.id in [listed.id for listed in client.jobs.list()]
    [output] = client.jobs.outputs(job.id)
    assert output.filename == "listed.png" and output.uri == done.output[0].uri


def test_a_failed_conversion_reports_an_integer_error_code(
        sandbox: Sandbox, client: Api2Convert, tmp_path: Path) -> None:
    """The SDK reads ``errors[].code`` as an integer, as the real API sends it."""
    source = tmp_path / "broken.png"
    source.write_bytes(b"\x89PNG\r\n\x1a\nnot an image at all")
    with pytest.raises(ConversionFailedError) as caught:
        client.convert(sandbox.serve_file(source, "broken.png"), "jpg")
    [error] = caught.value.errors()
    assert error.code == ERROR_CODES["CONVERSION_FAILED"] and error.source == "conversion"
    assert "broken.png" in error.message


def test_a_wrong_key_is_refused(sandbox: Sandbox) -> None:
    with Api2Convert("not-the-key", base_url=sandbox.url + "/onlineconvert/v2",
                     max_retries=0) as wrong, pytest.raises(AuthenticationError):
        wrong.jobs.list()


def test_the_seed_header_and_the_sdk_header_both_authenticate(sandbox: Sandbox) -> None:
    for header in ("X-Oc-Api-Key", "X-Api2convert-Api-Key"):
        answer = httpx.get(sandbox.url + "/onlineconvert/v2/jobs", headers={header: API_KEY})
        assert answer.status_code == 200, header


def test_a_signed_callback_verifies_with_the_sdk_verifier(
        sandbox: Sandbox, client: Api2Convert, receiver: Receiver, tmp_path: Path) -> None:
    sandbox.set_onlineconvert_signing_secret(WEBHOOK_SECRET)
    try:
        source = tmp_path / "hooked.png"
        source.write_bytes(png())
        hook = f"/onlineconvert/{uuid.uuid4()}"
        job = client.convert_async(sandbox.serve_file(source, "hooked.png"), "jpg",
                                   callback=receiver.url + hook)
        call = receiver.wait_for(hook)
    finally:
        sandbox.set_onlineconvert_signing_secret(None)
    signature = call["headers"]["x-oc-signature"]
    event = client.webhooks().construct_event(call["body"], signature, WEBHOOK_SECRET)
    assert event.job.id == job.id and event.job.is_completed()
    tampered = json.dumps({**json.loads(call["body"]), "id": "another"}).encode()
    with pytest.raises(SignatureVerificationError):
        client.webhooks().construct_event(tampered, signature, WEBHOOK_SECRET)


def test_callbacks_stay_unsigned_unless_signing_is_enabled(
        sandbox: Sandbox, client: Api2Convert, receiver: Receiver, tmp_path: Path) -> None:
    source = tmp_path / "plain.png"
    source.write_bytes(png())
    hook = f"/onlineconvert/{uuid.uuid4()}"
    job = client.convert_async(sandbox.serve_file(source, "plain.png"), "jpg",
                               callback=receiver.url + hook)
    call = receiver.wait_for(hook)
    assert "x-oc-signature" not in call["headers"]
    assert client.webhooks().parse(call["body"]).job.id == job.id


def test_a_lost_create_answer_is_not_retried_by_the_sdk(
        sandbox: Sandbox, tmp_path: Path) -> None:
    source = tmp_path / "lost.png"
    source.write_bytes(png())
    url = sandbox.serve_file(source, "lost.png")
    sandbox.set_faults(Faults(fail_after_create_rate=1.0, fail_after_create_status=503))
    before = len(sandbox.provider_jobs("onlineconvert"))
    try:
        with Api2Convert(API_KEY, base_url=sandbox.url + "/onlineconvert/v2", max_retries=2,
                         sleeper=lambda _: None) as client, pytest.raises(ServerError):
            client.convert_async(url, "jpg")
    finally:
        sandbox.set_faults(Faults())
    # the job was made once: the SDK re-sends no POST without an Idempotency-Key
    assert len(sandbox.provider_jobs("onlineconvert")) == before + 1


def hooked_job(sandbox: Sandbox, client: Api2Convert, receiver: Receiver, tmp_path: Path,
               script: list[tuple[float, int]]) -> tuple[str, str]:
    """(job id, callback path) of a job whose callback meets `script` at the receiver."""
    source = tmp_path / "timed.png"
    source.write_bytes(png())
    hook = f"/onlineconvert/{uuid.uuid4()}"
    receiver.script[hook] = script
    job = client.convert_async(sandbox.serve_file(source, "timed.png"), "jpg",
                               callback=receiver.url + hook)
    return job.id, hook


def test_a_callback_answered_after_3_s_counts_as_failed_and_is_retried(
        sandbox: Sandbox, client: Api2Convert, receiver: Receiver, tmp_path: Path) -> None:
    """Online-Convert's default schedule, its retry interval shortened from 10 s to 0.2 s:
    the 3 s limit on an attempt holds without being asked for."""
    sandbox.set_onlineconvert_callback_timing(
        dataclasses.replace(sandbox.onlineconvert_callback_timing, retry_seconds=0.2))
    try:
        job_id, _ = hooked_job(sandbox, client, receiver, tmp_path, [(4.0, 200)])
        sandbox.wait_idle(timeout=15)
    finally:
        sandbox.set_onlineconvert_callback_timing(None)
    attempts = [d["status"] for d in sandbox.deliveries() if d["job_id"] == job_id]
    assert attempts == [None, 200]


def test_the_default_schedule_is_online_converts_own(sandbox: Sandbox) -> None:
    assert sandbox.onlineconvert_callback_timing == CALLBACK_TIMING
    assert (CALLBACK_TIMING.timeout_seconds, CALLBACK_TIMING.retry_seconds,
            CALLBACK_TIMING.attempts) == (3.0, 10.0, 10)


def test_a_4xx_callback_answer_is_final(
        sandbox: Sandbox, client: Api2Convert, receiver: Receiver, tmp_path: Path) -> None:
    """By default: nothing set on the sandbox."""
    job_id, hook = hooked_job(sandbox, client, receiver, tmp_path, [(0.0, 410)])
    receiver.wait_for(hook)
    sandbox.wait_idle(timeout=5)
    assert [d["status"] for d in sandbox.deliveries() if d["job_id"] == job_id] == [410]
