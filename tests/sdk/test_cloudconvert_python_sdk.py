"""CloudConvert's official Python SDK (PyPI `cloudconvert`), unchanged, against the sandbox:
only its `endpoint` and `sync_endpoint` point at the sandbox. 10 checks: create a job and
wait for it on the sync API, find the job and its tasks (with task wait and the job's task
listing), list jobs by tag, upload an input through the SDK's form upload, download an
export/url result through a 302 to the storage host, verify a delivered webhook with
`Webhook.verify`, key scopes refused with 403, an export/url file without `size`, an
undocumented task field refused, and a create answer lost after the job was made (a 502)
leaving one job, found by its tag."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cloudconvert
import pytest
from cloudconvert.exceptions import exceptions as sdk_errors

from devstack.sandbox import Faults, Sandbox
from tests.sdk.conftest import API_KEY, SIGNING_SECRET, Receiver, image_format, png


@pytest.fixture(autouse=True)
def sdk(sandbox: Sandbox) -> Iterator[None]:
    """The SDK's default client, aimed at the sandbox with the full-scope key."""
    cloudconvert.configure(api_key=API_KEY, endpoint=sandbox.url, sync_endpoint=sandbox.sync_url)
    yield
    sandbox.set_faults(Faults())


def url_job(sandbox: Sandbox, tmp_path: Path, **extra: Any) -> dict[str, Any]:
    source = tmp_path / "in.png"
    source.write_bytes(png())
    return {"tasks": {
        "import": {"operation": "import/url", "url": sandbox.serve_file(source, "in.png")},
        "convert": {"operation": "convert", "input": "import", "output_format": "jpg"},
        "export": {"operation": "export/url", "input": "convert"},
    }, **extra}


def test_create_then_wait_on_the_sync_api_finds_the_finished_job(
        sandbox: Sandbox, tmp_path: Path) -> None:
    created = cloudconvert.Job.create(payload=url_job(sandbox, tmp_path))
    assert created["status"] in ("waiting", "processing")
    done = cloudconvert.Job.wait(id=created["id"])
    assert done["status"] == "finished"
    assert {t["name"]: t["status"] for t in done["tasks"]} == {
        "import": "finished", "convert": "finished", "export": "finished"}
    assert any(r["path"] == f"/sync/v2/jobs/{created['id']}" for r in sandbox.requests())


def test_find_job_and_task_and_list_the_jobs_tasks(sandbox: Sandbox, tmp_path: Path) -> None:
    job = cloudconvert.Job.wait(id=cloudconvert.Job.create(payload=url_job(sandbox,
                                                                           tmp_path))["id"])
    found = cloudconvert.Job.find(id=job["id"])
    assert found["id"] == job["id"] and found["status"] == "finished"
    export = next(t for t in job["tasks"] if t["name"] == "export")
    assert cloudconvert.Task.find(id=export["id"])["result"]["files"][0]["filename"] == "in.jpg"
    assert cloudconvert.Task.wait(id=export["id"])["status"] == "finished"
    listed = cloudconvert.Task.all({"filter[job_id]": job["id"]})
    assert sorted(t["name"] for t in listed) == ["convert", "export", "import"]
    exports = cloudconvert.Task.all({"filter[job_id]": job["id"],
                                     "filter[operation]": "export/url"})
    assert [t["id"] for t in exports] == [export["id"]]


def test_list_jobs_filtered_by_tag(sandbox: Sandbox, tmp_path: Path) -> None:
    tag = f"sdk-{uuid.uuid4()}"
    tagged = [cloudconvert.Job.create(payload=url_job(sandbox, tmp_path, tag=tag))["id"]
              for _ in range(2)]
    cloudconvert.Job.create(payload=url_job(sandbox, tmp_path, tag="someone-else"))
    listed = cloudconvert.Job.all({"filter[tag]": tag})
    assert sorted(job["id"] for job in listed) == sorted(tagged)
    assert all(job["tag"] == tag for job in listed)


def test_upload_an_input_with_the_sdk_form_upload(sandbox: Sandbox, tmp_path: Path) -> None:
    job = cloudconvert.Job.create(payload={"tasks": {
        "upload": {"operation": "import/upload"},
        "convert": {"operation": "convert", "input": "upload", "output_format": "jpg"},
        "export": {"operation": "export/url", "input": "convert"},
    }})
    upload_task = next(t for t in job["tasks"] if t["name"] == "upload")
    source = tmp_path / "photo.png"
    source.write_bytes(png((40, 30)))
    assert cloudconvert.Task.upload(file_name=str(source), task=upload_task) is True
    done = cloudconvert.Job.wait(id=job["id"])
    assert done["status"] == "finished"
    [file] = next(t for t in done["tasks"] if t["name"] == "export")["result"]["files"]
    assert file["filename"] == "photo.jpg"


def test_download_an_export_url_result_through_a_redirect(
        sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.set_faults(Faults(redirect_downloads=True))
    job = cloudconvert.Job.wait(id=cloudconvert.Job.create(payload=url_job(sandbox,
                                                                           tmp_path))["id"])
    [file] = next(t for t in job["tasks"] if t["name"] == "export")["result"]["files"]
    target = tmp_path / "out.jpg"
    assert cloudconvert.download(url=file["url"], filename=str(target)) == str(target)
    assert image_format(target.read_bytes()) == "JPEG"
    path = "/files/" + file["url"].split("/files/", 1)[1]
    assert [d["status"] for d in sandbox.downloads() if d["path"] == path] == [302, 200]


def test_a_delivered_webhook_verifies_with_the_sdk_verifier(
        sandbox: Sandbox, tmp_path: Path, receiver: Receiver) -> None:
    hook = f"/cloudconvert/{uuid.uuid4()}"
    cloudconvert.Job.create(payload=url_job(sandbox, tmp_path,
                                            webhook_url=receiver.url + hook))
    call = receiver.wait_for(hook)
    body = call["body"].decode()
    signature = call["headers"]["cloudconvert-signature"]
    assert cloudconvert.Webhook.verify(body, signature, SIGNING_SECRET) is True
    assert cloudconvert.Webhook.verify(body + " ", signature, SIGNING_SECRET) is False
    assert cloudconvert.Webhook.verify(body, signature, "another-secret") is False


def test_a_key_without_the_scope_is_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    write_only = sandbox.mint_cloudconvert_key({"task.write"})
    read_only = sandbox.mint_cloudconvert_key({"task.read"})
    cloudconvert.configure(api_key=write_only, endpoint=sandbox.url,
                           sync_endpoint=sandbox.sync_url)
    created = cloudconvert.Job.create(payload=url_job(sandbox, tmp_path))
    with pytest.raises(sdk_errors.ForbiddenAccess):
        cloudconvert.Job.find(id=created["id"])
    with pytest.raises(sdk_errors.ForbiddenAccess):
        cloudconvert.Job.all({"filter[tag]": "any"})
    cloudconvert.configure(api_key=read_only, endpoint=sandbox.url,
                           sync_endpoint=sandbox.sync_url)
    assert cloudconvert.Job.wait(id=created["id"])["status"] == "finished"
    with pytest.raises(sdk_errors.ForbiddenAccess):
        cloudconvert.Job.create(payload=url_job(sandbox, tmp_path))


def test_export_url_files_may_come_without_size(sandbox: Sandbox, tmp_path: Path) -> None:
    sandbox.set_faults(Faults(omit_export_url_size=True))
    job = cloudconvert.Job.wait(id=cloudconvert.Job.create(payload=url_job(sandbox,
                                                                           tmp_path))["id"])
    [file] = next(t for t in job["tasks"] if t["name"] == "export")["result"]["files"]
    assert "size" not in file and file["filename"] == "in.jpg"
    target = tmp_path / "sizeless.jpg"
    cloudconvert.download(url=file["url"], filename=str(target))
    assert image_format(target.read_bytes()) == "JPEG"


def test_an_undocumented_task_field_is_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    body = url_job(sandbox, tmp_path)
    body["tasks"]["export"]["metadata"] = {"marker": "x"}
    count = sandbox.job_count()
    with pytest.raises(sdk_errors.ResourceInvalid) as refused:
        cloudconvert.Job.create(payload=body)
    assert "tasks.export.metadata" in refused.value.content
    assert sandbox.job_count() == count


def test_a_lost_create_answer_leaves_one_job_found_by_its_tag(
        sandbox: Sandbox, tmp_path: Path) -> None:
    tag = f"lost-{uuid.uuid4()}"
    sandbox.set_faults(Faults(fail_after_create_rate=1.0, fail_after_create_status=502))
    with pytest.raises(sdk_errors.ServerError):
        cloudconvert.Job.create(payload=url_job(sandbox, tmp_path, tag=tag))
    sandbox.set_faults(Faults())
    [found] = cloudconvert.Job.all({"filter[tag]": tag})
    assert cloudconvert.Job.wait(id=found["id"])["status"] == "finished"
