"""Rules the sandbox enforces as the real CloudConvert API does, beyond what the SDK checks
show, as bounded Hypothesis properties: key scopes (every subset of the six scopes; 40
examples) and the exact field sets of import and export tasks (60 examples); and the
bridge's relay following the sandbox's download redirect."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convbridge.http import HostPattern, open_download
from devstack.sandbox import Faults, Sandbox
from devstack.sandbox.cloudconvert_v2 import _SCHEMAS, SCOPES
from devstack.servers import RELAY_EXTRA_HOSTS

EXACT = sorted(name for name, schema in _SCHEMAS.items() if schema.exact)


@pytest.fixture(scope="module")
def api(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=10) as client:
        yield client


@settings(max_examples=40, deadline=None)
@given(scopes=st.sets(st.sampled_from(sorted(SCOPES))))
def test_reads_need_task_read_and_writes_need_task_write(
        sandbox: Sandbox, api: httpx.Client, scopes: set[str]) -> None:
    """40 examples: a minted key reads jobs and tasks iff it has task.read, and gets past
    authorisation to validation on create iff it has task.write; otherwise 403."""
    headers = {"Authorization": f"Bearer {sandbox.mint_cloudconvert_key(scopes)}"}
    for path in ("/v2/jobs", "/v2/tasks", "/sync/v2/jobs/unknown-job"):
        status = api.get(path, headers=headers).status_code
        assert status == (403 if "task.read" not in scopes else 200 if "/sync/" not in path
                          else 404), path
    created = api.post("/v2/jobs", headers=headers, json={"tasks": {}})
    assert created.status_code == (422 if "task.write" in scopes else 403)
    if created.status_code == 403:
        assert created.json()["code"] == "FORBIDDEN"


field_name = st.from_regex(r"[a-z][a-z_]{0,12}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(operation=st.sampled_from(EXACT), data=st.data())
def test_exactly_the_undocumented_fields_of_a_task_are_refused(
        sandbox: Sandbox, api: httpx.Client, operation: str, data: st.DataObject) -> None:
    """60 examples: a task of a documented-field operation is refused naming each field it
    does not document, and no documented field is ever named as not allowed."""
    known = sorted(_SCHEMAS[operation].known() - {"operation", "input"})
    documented = data.draw(st.sets(st.sampled_from(known)))
    extra = data.draw(st.sets(field_name.filter(lambda name: name not in known
                                                 and name not in ("operation", "input")),
                              max_size=3))
    task = {"operation": operation, **{name: "x" for name in documented | extra}}
    # an always-invalid sibling keeps every example from making (and running) a job
    tasks = {"task": task, "invalid": {"operation": "no/such-operation"}}
    if operation.startswith("export/"):
        tasks |= {"source": {"operation": "import/upload"}, "task": {**task, "input": "source"}}
    count = sandbox.job_count()
    answer = api.post("/v2/jobs", json={"tasks": tasks},
                      headers={"Authorization": "Bearer sdk-conformance-key"})
    refused = {key.rsplit(".", 1)[1] for key, messages in answer.json().get("errors", {}).items()
               if key.startswith("tasks.task.") and any("not allowed" in m for m in messages)}
    assert refused == extra
    assert answer.status_code == 422 and sandbox.job_count() == count


def test_the_bridge_relay_follows_a_download_redirect_to_the_storage_host(
        sandbox: Sandbox, tmp_path: Path) -> None:
    """The 302 the redirect fault answers leads to another 127.0.0.1 port, which the dev
    stack's allow-list admits: the relay gets the file's bytes, not the redirect."""
    source = tmp_path / "served.bin"
    source.write_bytes(b"relayed bytes" * 100)
    url = sandbox.serve_file(source, "served.bin")
    sandbox.set_faults(Faults(redirect_downloads=True))
    try:
        with httpx.Client(timeout=10) as client, open_download(
                client, url, [HostPattern.parse(RELAY_EXTRA_HOSTS)]) as answer:
            assert answer.status_code == 200
            assert answer.read() == source.read_bytes()
    finally:
        sandbox.set_faults(Faults())
    path = urlsplit(url).path
    assert [d["status"] for d in sandbox.downloads() if d["path"] == path] == [302, 200]
    assert sandbox.storage_url != sandbox.url
